"""A real network partition of one storage node.

The node runs in its own network namespace (its own loopback), so it can
reach nothing and nothing can reach it except through this bridge, an
asyncio TCP relay owned by the chaos runner:

  host 127.0.0.1:<node port>, <node admin port>  -> namespace, same ports
  namespace 127.0.0.1:<meta ports>               -> host, same ports

Every byte the node sends or receives crosses the bridge: gateway -> node
(shard reads and writes, repair) and node -> meta (heartbeats, reports),
including the meta leader it is redirected to, since meta addresses resolve
to the same ports inside the namespace. `partition()` stops forwarding in
both directions (open connections hang, new ones are accepted but never
connected: what a dropped link looks like to TCP), `heal()` resumes.

Sockets inside the namespace are created by one thread that has entered it
with setns(2) (a socket belongs to the namespace it was created in); the
relay itself runs on an ordinary asyncio loop in a background thread.
"""

import asyncio
import concurrent.futures
import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(name):
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Bridge:
    def __init__(self, netns, inbound_ports, outbound_ports):
        self.netns = netns
        self.inbound = list(inbound_ports)
        self.outbound = list(outbound_ports)
        self.loop = asyncio.new_event_loop()
        self.flowing = None  # asyncio.Event, set = forwarding
        self.ns_exec = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, initializer=_enter_netns, initargs=(netns,))
        self.servers = []
        self.conns = set()
        self.partitioned = False
        self.bytes = 0
        self.thread = threading.Thread(target=self._run, name=f"bridge-{netns}", daemon=True)
        self._ready = threading.Event()
        self._error = None

    # ---- public, called from other threads ---------------------------------

    def start(self):
        self.thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error

    def partition(self):
        self.partitioned = True
        self.loop.call_soon_threadsafe(self.flowing.clear)

    def heal(self):
        self.partitioned = False
        self.loop.call_soon_threadsafe(self.flowing.set)

    def ns_accepts(self, port, timeout=0.5):
        """Whether something listens on `port` inside the namespace."""
        def probe():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                    return True
            except OSError:
                return False
        return self.ns_exec.submit(probe).result()

    def close(self):
        if not self.thread.is_alive():
            self.ns_exec.shutdown(wait=False)
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        try:
            fut.result(10)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.ns_exec.shutdown(wait=False)

    # ---- the relay -------------------------------------------------------

    def _run(self):
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except Exception as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    async def _start(self):
        self.flowing = asyncio.Event()
        self.flowing.set()
        for port in self.inbound:
            # Host side: our listener on the node's own port.
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", port))
            ls.listen(256)
            ls.setblocking(False)
            srv = await asyncio.start_server(
                lambda r, w, p=port: self._relay(r, w, p, into_ns=True), sock=ls)
            self.servers.append(srv)
        for port in self.outbound:
            # Namespace side: a listener created inside the namespace.
            ls = await self.loop.run_in_executor(self.ns_exec, _listener, port)
            srv = await asyncio.start_server(
                lambda r, w, p=port: self._relay(r, w, p, into_ns=False), sock=ls)
            self.servers.append(srv)

    async def _connect(self, port, into_ns):
        if into_ns:
            s = await self.loop.run_in_executor(self.ns_exec, socket.socket)
        else:
            s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(self.loop.sock_connect(s, ("127.0.0.1", port)), 5)
        except BaseException:
            s.close()
            raise
        return await asyncio.open_connection(sock=s)

    async def _relay(self, cr, cw, port, into_ns):
        task = asyncio.current_task()
        self.conns.add(task)
        uw = None
        try:
            # A new connection during a partition waits, like a SYN that
            # gets no answer.
            await self.flowing.wait()
            try:
                ur, uw = await self._connect(port, into_ns)
            except (OSError, asyncio.TimeoutError):
                return
            await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw))
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            for w in (cw, uw):
                if w is not None:
                    try:
                        w.close()
                    except Exception:
                        pass
            self.conns.discard(task)

    async def _pipe(self, r, w):
        try:
            while True:
                await self.flowing.wait()
                data = await r.read(1 << 16)
                if not data:
                    break
                # Bytes read just before a partition are held until it heals.
                await self.flowing.wait()
                w.write(data)
                self.bytes += len(data)
                await w.drain()
        finally:
            try:
                w.write_eof()
            except Exception:
                pass

    async def _shutdown(self):
        for s in self.servers:
            s.close()
        for t in list(self.conns):
            t.cancel()
        await asyncio.sleep(0.1)


def _listener(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(256)
    ls.setblocking(False)
    return ls
