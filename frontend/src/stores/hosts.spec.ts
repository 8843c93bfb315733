import { afterEach, describe, expect, it, vi } from 'vitest'
import { Hosts } from './hosts'

function setVisibility(state: 'visible' | 'hidden') {
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state })
  document.dispatchEvent(new Event('visibilitychange'))
}

afterEach(() => {
  vi.useRealTimers()
  vi.unstubAllGlobals()
})

describe('Hosts', () => {
  it('keeps one connection per daemon and suspends them in hidden tabs after a grace period', () => {
    vi.useFakeTimers()
    // No daemon in unit tests: sockets never open, which is all this test needs.
    vi.stubGlobal('fetch', () => new Promise(() => {}))
    class Socket {
      readyState = 0
      close() {}
      send() {}
    }
    vi.stubGlobal('WebSocket', Socket)
    const hosts = new Hosts(300)
    hosts.keep(['', 'http://db1:7470'])
    expect([...hosts.conns.keys()]).toEqual(['', 'http://db1:7470'])
    expect(hosts.get('')).toBe(hosts.conns.get(''))
    const stop = hosts.watchVisibility(10_000)
    setVisibility('hidden')
    vi.advanceTimersByTime(5_000)
    expect(hosts.get('').state.value).toBe('connecting')
    vi.advanceTimersByTime(6_000)
    expect(hosts.get('').state.value).toBe('suspended')
    setVisibility('visible')
    expect(hosts.get('').state.value).toBe('connecting')
    hosts.keep(['http://db1:7470'])
    expect([...hosts.conns.keys()]).toEqual(['http://db1:7470'])
    stop()
    hosts.stopAll()
  })
})
