"""A small asyncio TCP proxy for chaos tests: it can pause, drop, delay and refuse connections.

It runs its own event loop in a thread of the test process, listens on 127.0.0.1 and forwards
each accepted connection to an upstream address. The upstream connection leaves from the client's
own address (127.0.0.x), so the leader still sees each worker's source IP. Every accept is
time-stamped: that is how tests count connection attempts per second.
"""
import asyncio
import socket
import struct
import threading
import time

CHUNK_BYTES = 64 * 1024


def _set_rst_on_close(writer):
    """SO_LINGER 0: closing the socket sends RST, like a link that dies, not a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass


class _Pipe:
    """One proxied connection: client <-> upstream, two pumps."""

    def __init__(self, proxy, client_reader, client_writer):
        self.proxy = proxy
        self.client = (client_reader, client_writer)
        self.upstream = None
        self.tasks = []
        self.flowing = asyncio.Event()  # this connection only (freeze_open)
        self.flowing.set()

    async def run(self):
        """Connect upstream, then pump both ways until either side ends."""
        reader, writer = self.client
        _set_rst_on_close(writer)
        peer_ip = writer.get_extra_info("peername")[0]
        try:
            if self.proxy.refusing:
                raise ConnectionRefusedError("proxy refuses")
            self.upstream = await asyncio.open_connection(self.proxy.upstream_host,
                                                          self.proxy.upstream_port,
                                                          local_addr=(peer_ip, 0))
        except OSError:
            self.abort()
            return
        _set_rst_on_close(self.upstream[1])
        self.tasks = [asyncio.ensure_future(self._pump(reader, self.upstream[1])),
                      asyncio.ensure_future(self._pump(self.upstream[0], writer))]
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.abort()

    async def _pump(self, reader, writer):
        """Copy bytes one way, honouring pause (bytes are held, as TCP retransmits them), delay."""
        queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                if data is None:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.proxy.flowing.wait()
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    break
                queue.put_nowait((time.monotonic() + self.proxy.delay_s, data))
            queue.put_nowait((0, None))
            await sender
        finally:
            sender.cancel()

    def abort(self):
        """Tear down both sides at once (RST)."""
        for task in self.tasks:
            task.cancel()
        for pair in (self.client, self.upstream):
            if pair is not None:
                pair[1].transport.abort()
        self.proxy.pipes.discard(self)


class ChaosProxy:
    """Forwards 127.0.0.1:port to upstream; pause(), resume(), drop(), delay, refuse."""

    def __init__(self, upstream_host, upstream_port):
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.port = None
        self.delay_s = 0.0
        self.refusing = False
        self.accepts = []  # monotonic time of every accepted connection
        self.pipes = set()
        self.loop = asyncio.new_event_loop()
        self.flowing = None
        self.server = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="chaos-proxy",
                                       daemon=True)

    def _call(self, coro_or_fn):
        """Run something on the proxy's loop and wait for its result."""
        async def wrapper():
            result = coro_or_fn()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def start(self):
        """Listen on a free port of 127.0.0.1; returns self."""
        self.thread.start()

        async def setup():
            self.flowing = asyncio.Event()
            self.flowing.set()
            self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
        self._call(setup)
        return self

    async def _accept(self, reader, writer):
        self.accepts.append(time.monotonic())
        pipe = _Pipe(self, reader, writer)
        self.pipes.add(pipe)
        await pipe.run()

    def pause(self):
        """Stop forwarding both ways; connections stay open (a silent link: nothing arrives, nothing
        is refused; held bytes go out on resume, as TCP would retransmit them)."""
        self._call(lambda: self.flowing.clear())

    def freeze_open(self):
        """Black-hole the connections open now, forever; new ones flow (a half-open path: the
        NAT or WireGuard endpoint changed under a live TCP connection)."""
        self._call(lambda: [p.flowing.clear() for p in list(self.pipes)])

    def resume(self):
        """Forward again (held bytes go out first)."""
        self._call(lambda: self.flowing.set())

    def drop(self):
        """Reset every open connection now (new ones are still accepted)."""
        self._call(lambda: [p.abort() for p in list(self.pipes)])

    def set_delay(self, seconds):
        """Delay every chunk by this much, each way."""
        self.delay_s = float(seconds)

    def refuse(self, on=True):
        """Accept, then reset at once: what a forwarder does while its upstream is down."""
        self.refusing = on

    def open_connections(self):
        """Connections currently proxied."""
        return len(self.pipes)

    def attempts_between(self, start, end):
        """Accepted connections with start <= time < end."""
        return sum(1 for t in list(self.accepts) if start <= t < end)

    def stop(self):
        """Close the listener and every connection, stop the loop and its thread."""
        async def teardown():
            self.server.close()
            for pipe in list(self.pipes):
                pipe.abort()
            await self.server.wait_closed()
        try:
            self._call(teardown)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
