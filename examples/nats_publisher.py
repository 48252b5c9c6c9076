#!/usr/bin/env python3
"""A publisher on NATS with a stock client (nats-py): publishes JSON events
that Switchboard delivers to every WebSocket subscriber of the channel.

    pip install nats-py nkeys
    python3 examples/nats_publisher.py --url nats://127.0.0.1:4222 \
        --creds ingest.creds --channel chat.1 --count 3

The creds come from `POST /v1/orgs/<org>/publishers` (the "creds" field of
its answer). The subject is `pub.<channel>`; the payload is the message's
data: any JSON value but null.
"""

import argparse
import asyncio
import json

import nats


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--creds", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args()

    nc = await nats.connect(args.url, user_credentials=args.creds, max_reconnect_attempts=1)
    for n in range(args.count):
        event = {"n": n, "from": "nats-py"}
        await nc.publish(f"pub.{args.channel}", json.dumps(event).encode())
    await nc.flush()
    await nc.close()
    print(f"published {args.count} events on pub.{args.channel}")


if __name__ == "__main__":
    asyncio.run(main())
