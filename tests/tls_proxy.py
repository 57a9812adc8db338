"""A TLS-terminating TCP proxy for the suite: accepts TLS on 127.0.0.1:LISTEN with CERT/KEY and
forwards the plaintext to 127.0.0.1:UPSTREAM. Put in front of the tansu broker (which advertises
LISTEN), it makes a Kafka-protocol broker that speaks only TLS, as a production cluster with an
SSL listener does.

usage: tls_proxy.py CERT KEY LISTEN UPSTREAM

Prints `listening` once ready, then `tls <n>` for every completed handshake (stdout, flushed).
A client that does not speak TLS never reaches the broker.
"""

import asyncio
import ssl
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(cert, key, listen, upstream):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handshakes = 0

    async def serve(client_reader, client_writer):
        nonlocal handshakes
        handshakes += 1
        print(f"tls {handshakes}", flush=True)
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, broker_writer), pipe(broker_reader, client_writer)
        )

    server = await asyncio.start_server(serve, "127.0.0.1", listen, ssl=context)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    cert, key, listen, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(cert, key, listen, upstream))
