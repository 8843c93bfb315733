/** Test doubles for the store specs: the browser's WebSocket, with the test playing the daemon. */
import type { Env } from './host'

export class FakeSocket {
  static all: FakeSocket[] = []
  readyState = 0
  sent: Record<string, unknown>[] = []
  onopen: (() => void) | null = null
  onmessage: ((ev: { data: string }) => void) | null = null
  onclose: ((ev: { code: number; reason: string }) => void) | null = null
  onerror: (() => void) | null = null
  closedByClient: number | null = null
  constructor(readonly url: string) {
    FakeSocket.all.push(this)
  }
  send(text: string) {
    this.sent.push(JSON.parse(text))
  }
  close(code: number) {
    this.closedByClient = code
    this.readyState = 3
  }
  // daemon side
  accept() {
    this.readyState = 1
    this.onopen?.()
  }
  deliver(msg: unknown) {
    this.onmessage?.({ data: JSON.stringify(msg) })
  }
  drop(code: number, reason = '') {
    this.readyState = 3
    this.onclose?.({ code, reason })
  }
}

/** Timers the test fires by hand; frames run at once. */
export function makeEnv(now: () => number) {
  const timers: (() => void)[] = []
  const env: Partial<Env> = {
    WebSocket: FakeSocket as unknown as typeof WebSocket,
    now,
    frame: (cb) => cb(),
    setTimeout: (cb) => {
      timers.push(cb)
      return timers.length
    },
    clearTimeout: () => {},
  }
  return { env, timers }
}

export const flush = () => new Promise((r) => setTimeout(r, 0))
