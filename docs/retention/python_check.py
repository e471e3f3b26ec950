"""Resume check with the reference Python asyncio client (hpfeeds.asyncio,
as hpfeeds-logger uses it), against a broker started with --retain=events.
Not part of CI: the Python hpfeeds package is not vendored here. Run with
PYTHONPATH pointing at a checkout of github.com/hpfeeds/hpfeeds:

  python3 python_check.py pub PORT RATE SECONDS   numbered messages on events
  python3 python_check.py sub PORT                prints each number received

docs/retention.md shows the whole procedure and what it measured.
"""
import asyncio
import sys

from hpfeeds.asyncio import ClientSession

PAD = 200


def payload(n):
    s = '%d ' % n
    return (s + 'x' * (PAD - len(s))).encode()


async def pub(port, rate, seconds):
    async with ClientSession('127.0.0.1', port, 'rsensor', 's') as c:
        n, tick = 0, 0.01
        for _ in range(int(seconds / tick)):
            for _ in range(rate // 100):
                c.publish('events', payload(n))
                n += 1
            await asyncio.sleep(tick)
        await asyncio.sleep(1)
    print(n, flush=True)


async def sub(port):
    async with ClientSession('127.0.0.1', port, 'rlogger', 's') as c:
        c.subscribe('events')
        async for ident, channel, data in c:
            n = int(data.split(b' ', 1)[0])
            if data != payload(n):
                print('CORRUPT', n, flush=True)
            print(n, flush=True)


if __name__ == '__main__':
    if sys.argv[1] == 'pub':
        asyncio.run(pub(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    else:
        asyncio.run(sub(int(sys.argv[2])))
