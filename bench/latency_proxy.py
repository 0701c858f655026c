#!/usr/bin/env python3
"""A TCP proxy that delays every request by a fixed time plus jitter: the local SQS server as a
remote one looks to the worker. Each chunk from the client is forwarded to the server DELAY ms
(plus 0 to JITTER ms) after it arrived, in order per connection; answers come straight back. An
SQS call (one HTTP request on a kept-alive connection) thus takes DELAY ms more, as a call to a
queue DELAY ms away would, and calls on separate connections overlap as they would there.

    bench/latency_proxy.py --target 127.0.0.1:PORT --delay-ms 10 [--jitter-ms 2] [--listen 127.0.0.1:0]

Prints `listening on 127.0.0.1:PORT` once it accepts connections; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float, jitter: float) -> None:
    loop = asyncio.get_running_loop()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        pending: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def requests_in() -> None:
            last_due = 0.0
            while data := await client_reader.read(65536):
                # Never earlier than the chunk before it: a connection's bytes stay in order.
                last_due = max(last_due, loop.time() + delay + random.uniform(0.0, jitter))
                pending.put_nowait((last_due, data))
            pending.put_nowait(None)

        async def requests_out() -> None:
            while (item := await pending.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                server_writer.write(data)
                await server_writer.drain()
            if server_writer.can_write_eof():
                server_writer.write_eof()

        async def answers_back() -> None:
            while data := await server_reader.read(65536):
                client_writer.write(data)
                await client_writer.drain()

        try:
            await asyncio.gather(requests_in(), requests_out(), answers_back())
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # The proxy is stopping (SIGTERM): the connection just closes.
            pass
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    server = await asyncio.start_server(handle, *listen)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=host_port, required=True, help="HOST:PORT of the SQS server")
    parser.add_argument("--listen", type=host_port, default=("127.0.0.1", 0), help="HOST:PORT to listen on (default 127.0.0.1:0, a free port)")
    parser.add_argument("--delay-ms", type=float, required=True, help="fixed delay added to each request")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="random extra delay, 0 to this much (default 0)")
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or args.jitter_ms < 0:
        parser.error("--delay-ms and --jitter-ms cannot be negative")
    asyncio.run(serve(args.listen, args.target, args.delay_ms / 1000, args.jitter_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
