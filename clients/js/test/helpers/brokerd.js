// Runs a real brokerd for integration and browser tests: builds it from
// this repository once per test file, starts it on a free loopback port
// with a temporary data directory, and stops, restarts or freezes it.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** The root of the Go module (the repository). */
export const repoRoot = resolve(here, '../../../..');

let built = null;

/** Builds brokerd into a temporary directory; resolves with the binary's path. */
export function buildBrokerd() {
  if (!built) {
    built = (async () => {
      const dir = await mkdtemp(join(tmpdir(), 'brokerd-js-bin-'));
      const bin = join(dir, 'brokerd');
      await new Promise((res, rej) => {
        execFile('go', ['build', '-o', bin, './cmd/brokerd'], { cwd: repoRoot, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
          if (err) rej(new Error(`go build ./cmd/brokerd failed: ${stderr || err.message}`));
          else res();
        });
      });
      process.on('exit', () => {
        import('node:fs').then(({ rmSync }) => rmSync(dir, { recursive: true, force: true })).catch(() => {});
      });
      return bin;
    })();
  }
  return built;
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const running = new Set();
process.on('exit', () => {
  for (const b of running) b.proc && b.proc.kill('SIGKILL');
});

/** One brokerd process, restartable on the same port and data directory. */
export class Brokerd {
  constructor({ bin, port, dataDir, args = [] }) {
    this.bin = bin;
    this.port = port;
    this.dataDir = dataDir;
    this.args = args;
    this.proc = null;
    this.log = '';
  }

  /** Builds brokerd and starts one with a fresh data directory. */
  static async start({ args = [] } = {}) {
    const bin = await buildBrokerd();
    const dataDir = await mkdtemp(join(tmpdir(), 'brokerd-js-data-'));
    const b = new Brokerd({ bin, port: await freePort(), dataDir, args });
    await b.start();
    return b;
  }

  get addr() {
    return `127.0.0.1:${this.port}`;
  }

  get wsURL() {
    return `ws://${this.addr}/ws`;
  }

  get httpURL() {
    return `http://${this.addr}`;
  }

  async start() {
    if (this.proc) throw new Error('brokerd is running already');
    const proc = spawn(this.bin, ['--addr', this.addr, '--data', this.dataDir, '--log-level', 'warn', ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    running.add(this);
    const onData = (d) => {
      this.log += d.toString();
      if (this.log.length > 1 << 20) this.log = this.log.slice(-(1 << 19));
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.exited = new Promise((res) => proc.on('exit', (code, signal) => res({ code, signal })));
    const deadline = Date.now() + 15000;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        this.proc = null;
        throw new Error(`brokerd exited at start:\n${this.log}`);
      }
      try {
        const r = await fetch(`${this.httpURL}/healthz`);
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`brokerd did not come up:\n${this.log}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** Stops the process with signal (SIGTERM: a graceful drain) and waits for it to exit. */
  async stop(signal = 'SIGTERM') {
    const proc = this.proc;
    if (!proc) return null;
    if (this.frozen) this.thaw();
    proc.kill(signal);
    const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
    const res = await proc.exited;
    clearTimeout(t);
    this.proc = null;
    running.delete(this);
    return res;
  }

  /** SIGTERM, then start again on the same port and data directory. */
  async restart() {
    await this.stop();
    await this.start();
  }

  /** Empties the data directory (the process must be stopped): every topic gets a new epoch. */
  async wipe() {
    if (this.proc) throw new Error('stop brokerd before wiping its data');
    await rm(this.dataDir, { recursive: true, force: true });
  }

  /** Freezes the process (SIGSTOP): connections stay open but nothing answers. */
  freeze() {
    this.proc.kill('SIGSTOP');
    this.frozen = true;
  }

  thaw() {
    this.proc.kill('SIGCONT');
    this.frozen = false;
  }

  /** Stops the process and removes its data. */
  async dispose() {
    await this.stop('SIGKILL');
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
