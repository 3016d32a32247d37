package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/brokerd/brokerd/broker"
)

// CommitAsync queues a durable consumer's acknowledged offset (see
// broker.Store); it is committed in the same transactions as appends. Within
// one epoch an offset never moves backwards: a lower one is ignored and done
// gets the stored position. A different epoch replaces the stored one. done
// may be nil and follows the rules of AppendAsync.
func (db *DB) CommitAsync(consumer, topic, epoch string, offset uint64, done func(broker.ConsumerOffset, error)) {
	o := newOp(opCommit)
	o.consumer, o.topic, o.epoch, o.offset, o.commitDone = consumer, topic, epoch, offset, done
	o.err = checkConsumer(consumer, topic, epoch)
	if err := db.enqueue(nil, o); err != nil {
		o.err = err
		go finish(o)
	}
}

func checkConsumer(consumer, topic, epoch string) error {
	if consumer == "" || len(consumer) > MaxTopicBytes {
		return fmt.Errorf("%w: %d bytes, must be 1 to %d", ErrInvalidConsumer, len(consumer), MaxTopicBytes)
	}
	if err := checkName(topic); err != nil {
		return err
	}
	if len(epoch) > 255 {
		return fmt.Errorf("store: commit: epoch of %d bytes, the limit is 255", len(epoch))
	}
	return nil
}

// applyCommit stores a consumer offset unless it would move backwards.
func (db *DB) applyCommit(b *batch, o *op) error {
	cb := b.tx.Bucket(consumersName)
	key := consumerKey(b.alloc(consumerKeySize(o.consumer, o.topic))[:0], o.consumer, o.topic)
	if v := cb.Get(key); v != nil {
		epoch, off, updated, err := decodeConsumerVal(v)
		if err == nil && epoch == o.epoch && o.offset <= off {
			o.co = broker.ConsumerOffset{Consumer: o.consumer, Topic: o.topic, Epoch: epoch, Offset: off, Updated: time.UnixMilli(updated)}
			return nil
		}
	}
	val := putConsumerVal(b.alloc(consumerValSize(o.epoch)), o.epoch, o.offset, b.nowMs)
	if err := cb.Put(key, val); err != nil {
		return err
	}
	o.co = broker.ConsumerOffset{Consumer: o.consumer, Topic: o.topic, Epoch: o.epoch, Offset: o.offset, Updated: time.UnixMilli(b.nowMs)}
	return nil
}

// Consumer returns consumer's stored position in topic; ok is false when it
// has none.
func (db *DB) Consumer(consumer, topic string) (co broker.ConsumerOffset, ok bool, err error) {
	if err := checkConsumer(consumer, topic, ""); err != nil {
		return co, false, err
	}
	if err := db.rlock(); err != nil {
		return co, false, err
	}
	defer db.mu.RUnlock()
	err = db.bolt.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(consumersName).Get(consumerKey(nil, consumer, topic))
		if v == nil {
			return nil
		}
		epoch, off, updated, err := decodeConsumerVal(v)
		if err != nil {
			return err
		}
		co = broker.ConsumerOffset{Consumer: consumer, Topic: topic, Epoch: epoch, Offset: off, Updated: time.UnixMilli(updated)}
		ok = true
		return nil
	})
	if err != nil {
		return broker.ConsumerOffset{}, false, fmt.Errorf("store: consumer %q topic %q: %w", consumer, topic, err)
	}
	return co, ok, nil
}

// Consumers lists consumer's stored positions in topic order.
func (db *DB) Consumers(consumer string) ([]broker.ConsumerOffset, error) {
	if consumer == "" || len(consumer) > MaxTopicBytes {
		return nil, fmt.Errorf("%w: %d bytes, must be 1 to %d", ErrInvalidConsumer, len(consumer), MaxTopicBytes)
	}
	if err := db.rlock(); err != nil {
		return nil, err
	}
	defer db.mu.RUnlock()
	var out []broker.ConsumerOffset
	prefix := consumerPrefix(consumer)
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(consumersName).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			epoch, off, updated, err := decodeConsumerVal(v)
			if err != nil {
				return err
			}
			out = append(out, broker.ConsumerOffset{
				Consumer: consumer, Topic: string(k[len(prefix):]), Epoch: epoch, Offset: off, Updated: time.UnixMilli(updated),
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: consumers of %q: %w", consumer, err)
	}
	return out, nil
}

// AllConsumers lists up to max stored positions of every consumer, in
// (consumer, topic) order, starting after (afterConsumer, afterTopic);
// both "" start at the beginning. A cluster copies them to a new follower
// with it.
func (db *DB) AllConsumers(afterConsumer, afterTopic string, max int) ([]broker.ConsumerOffset, error) {
	if err := db.rlock(); err != nil {
		return nil, err
	}
	defer db.mu.RUnlock()
	var out []broker.ConsumerOffset
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(consumersName).Cursor()
		k, v := c.First()
		if afterConsumer != "" {
			after := consumerKey(nil, afterConsumer, afterTopic)
			if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
		}
		for ; k != nil && len(out) < max; k, v = c.Next() {
			if len(k) < 2 || len(k) < 2+int(binary.BigEndian.Uint16(k)) {
				return fmt.Errorf("%w: consumer key %q", ErrCorrupt, k)
			}
			cl := int(binary.BigEndian.Uint16(k))
			epoch, off, updated, err := decodeConsumerVal(v)
			if err != nil {
				return err
			}
			out = append(out, broker.ConsumerOffset{
				Consumer: string(k[2 : 2+cl]), Topic: string(k[2+cl:]), Epoch: epoch, Offset: off, Updated: time.UnixMilli(updated),
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: consumers: %w", err)
	}
	return out, nil
}
