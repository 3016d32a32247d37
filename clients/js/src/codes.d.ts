// Types of codes.js, generated from the server's tables like it.

/** An error code of err and unsubbed events. */
export type ErrorCode =
  | 'bad_request'
  | 'unknown_op'
  | 'invalid_topic'
  | 'unauthorized'
  | 'forbidden'
  | 'offset_out_of_range'
  | 'epoch_mismatch'
  | 'not_subscribed'
  | 'already_subscribed'
  | 'too_many_subscriptions'
  | 'message_too_large'
  | 'rate_limited'
  | 'unavailable'
  | 'internal'
  | 'taken_over'
  | 'slow'
  | 'topic_deleted'
  | 'not_found'
  | 'too_many_topics'
;

/** A close code the server uses. */
export type CloseCodeNumber =
  | 1000
  | 1001
  | 1002
  | 1003
  | 1007
  | 1008
  | 1009
  | 1011
  | 1013
  | 4001
  | 4003
  | 4008
  | 4029
;

/** Every error code with its description. */
export declare const ErrorCodes: Readonly<Record<ErrorCode, string>>;

/** Close codes by number, with their names ("going_away"). */
export declare const CloseCodes: Readonly<Record<CloseCodeNumber, string>>;
