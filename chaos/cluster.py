"""Control of a real multi-process `tessera dev` cluster for the chaos runner
and the repair benchmark: start it, kill / stop / restart its nodes with the
exact command lines recorded in cluster.json, read `tessera admin status
--json`, and clean up every process, network namespace and mount it made.

The `tessera dev` supervisor never restarts a killed child (only a meta node
that exits with status 75 after a failed disk write). A node killed here is
restarted here, as a child of this process, with the argv recorded in
cluster.json (`nodes[].argv`), no inherited TESSERA_* variable, and the cluster
secret from DIR/cluster-secret in $TESSERA_CLUSTER_SECRET (cluster.json names
the variables, never their values).
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_ENV = "TESSERA_CLUSTER_SECRET"
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    """preexec_fn fallback: SIGKILL when the thread that spawned us dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


_prctl = _libc.prctl  # resolved before any fork


def spawn(argv, log, env, sig="KILL"):
    """Popen in its own session that dies with this process, even when this
    process is SIGKILLed (PR_SET_PDEATHSIG, set by setpriv(1) when present:
    no Python code between fork and exec in a threaded program). Call it from
    the main thread: the death signal follows the spawning thread."""
    kw = dict(stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    if shutil.which("setpriv"):
        return subprocess.Popen(["setpriv", "--pdeathsig", sig, "--"] + list(argv), **kw)
    return subprocess.Popen(list(argv), preexec_fn=_die_with_parent, **kw)


def tessera_bin():
    explicit = os.environ.get("TESSERA_BIN")
    if explicit:
        return explicit
    targets = [os.environ.get("CARGO_TARGET_DIR"), os.path.expanduser("~/.cache/tessera-target"),
               os.path.join(ROOT, "target")]
    for target in filter(None, targets):
        for profile in ("release", "debug"):
            path = os.path.join(target, profile, "tessera")
            if os.path.exists(path):
                return path
    raise RuntimeError("tessera binary not found: build it (cargo build --bin tessera) or set TESSERA_BIN")


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_base(start=24000, span=100, step=100, tries=80):
    """The first base from `start` whose `span` ports are all free."""
    base = start
    for _ in range(tries):
        if base + span > 65000:
            break
        if all(port_free(p) for p in range(base, base + span)):
            return base
        base += step
    raise RuntimeError(f"no free range of {span} ports from {start}")


def accepts(addr, timeout=0.5):
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid):
    """False for a process that is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return not stat.rsplit(")", 1)[1].strip().startswith("Z")


class Node:
    """One process of the cluster. `state` is what we did to it: up, killed,
    stopped."""

    def __init__(self, entry):
        self.role = entry["role"]
        self.id = entry["id"]
        self.addr = entry["addr"]
        self.admin_addr = entry.get("admin_addr", "")
        self.argv = list(entry.get("argv") or [])
        self.env_names = list(entry.get("env") or [])
        self.log = entry.get("log", "")
        self.pid = entry["pid"]
        self.proc = None  # a Popen once we restarted it
        self.state = "up"
        self.netns = None  # network namespace it runs in, if any
        self.accept_check = None  # how to tell it listens (in its namespace)
        self.overrides = {}  # flag -> value, replacing or added to argv
        if self.role == "gateway":
            self.name = "gateway-1"
        elif self.role == "meta":
            self.name = f"meta-{self.id}"
        else:
            self.name = None  # storage-<i>, from the data dir in argv

    def __repr__(self):
        return f"{self.name}({self.state}, pid {self.pid})"


class Cluster:
    """A `tessera dev` cluster in `data_dir` on `port_base`."""

    def __init__(self, data_dir, port_base, storage_nodes=8, zones=4, k=4, m=2,
                 suspect_after_ms=None, down_after_ms=None, binary=None, log_level=None,
                 dev_env=None):
        self.dir = os.path.abspath(data_dir)
        self.base = port_base
        self.n = storage_nodes
        self.zones = zones
        self.k = k
        self.m = m
        self.suspect_after_ms = suspect_after_ms
        self.down_after_ms = down_after_ms
        self.bin = binary or tessera_bin()
        self.log_level = log_level
        # TESSERA_* settings `tessera dev` passes on to its storage nodes
        # (e.g. TESSERA_SCRUB_PERIOD_MS); every other such variable is dropped.
        self.dev_env = dict(dev_env or {})
        self.sup = None
        self.info = None
        self.nodes = {}
        self.netns = []  # namespaces we created
        self.mounts = []  # mount points we created
        self.cleanups = []  # extra callables run on close

    # ---- life cycle -----------------------------------------------------

    def start(self, timeout=120):
        os.makedirs(self.dir, exist_ok=True)
        cj = os.path.join(self.dir, "cluster.json")
        if os.path.exists(cj):
            os.remove(cj)
        args = [self.bin]
        if self.log_level:
            args += ["--log-level", self.log_level]
        args += ["dev", "--data-dir", self.dir, "--port-base", str(self.base),
                 "--storage-nodes", str(self.n), "--zones", str(self.zones),
                 "--k", str(self.k), "--m", str(self.m), "--ready-timeout", str(timeout)]
        if self.suspect_after_ms is not None:
            args += ["--suspect-after-ms", str(self.suspect_after_ms)]
        if self.down_after_ms is not None:
            args += ["--down-after-ms", str(self.down_after_ms)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env.update(self.dev_env)
        log = open(os.path.join(self.dir, "dev.log"), "ab")
        # SIGTERM if we die: the supervisor then stops its children in order.
        self.sup = spawn(args, log, env, sig="TERM")
        log.close()
        t0 = time.time()
        while time.time() - t0 < timeout + 10:
            if self.sup.poll() is not None:
                raise RuntimeError(f"tessera dev exited with {self.sup.returncode}; see {self.dir}/dev.log:\n"
                                   + tail(os.path.join(self.dir, "dev.log")))
            if os.path.exists(cj):
                try:
                    with open(cj) as f:
                        self.info = json.load(f)
                    break
                except json.JSONDecodeError:
                    pass
            time.sleep(0.2)
        else:
            raise RuntimeError("cluster.json did not appear in time")
        for e in self.info["nodes"]:
            node = Node(e)
            if not node.argv:
                raise RuntimeError("cluster.json has no argv for its nodes: this `tessera` predates "
                                   "restartable dev clusters; rebuild it")
            if node.role == "storage":
                d = node.argv[node.argv.index("--data-dir") + 1]
                node.name = os.path.basename(d.rstrip("/"))
                node.data_dir = d
            self.nodes[node.name] = node
        return self.info

    def close(self):
        """Stops everything we started; safe to call twice and on failure."""
        for node in self.nodes.values():
            if node.state == "stopped":
                self._signal(node, signal.SIGCONT)
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # cleanup must go on
                print(f"[chaos] cleanup step failed: {e}")
        self.cleanups = []
        if self.sup is not None and self.sup.poll() is None:
            self.sup.send_signal(signal.SIGTERM)
            try:
                self.sup.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.sup.kill()
                self.sup.wait()
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
            elif pid_alive(node.pid):
                try:
                    os.kill(node.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for mnt in reversed(self.mounts):
            # Keep what the node held for the post-mortem: the tmpfs goes.
            saved = mnt + ".tmpfs-copy"
            copied = subprocess.run(["cp", "-a", mnt, saved], stderr=subprocess.DEVNULL).returncode == 0
            subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
            if copied:
                shutil.rmtree(mnt, ignore_errors=True)
                os.rename(saved, mnt)
        self.mounts = []
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.netns = []

    # ---- nodes ----------------------------------------------------------

    def storage(self):
        return [self.nodes[f"storage-{i}"] for i in range(1, self.n + 1)]

    def metas(self):
        return [self.nodes[f"meta-{i}"] for i in range(1, 4)]

    def gateway(self):
        return self.nodes["gateway-1"]

    def _signal(self, node, sig):
        if node.proc is not None:
            if node.proc.poll() is None:
                node.proc.send_signal(sig)
        elif pid_alive(node.pid):
            os.kill(node.pid, sig)

    def kill(self, node):
        """kill -9, and wait until the process is gone."""
        if node.state == "stopped":
            self._signal(node, signal.SIGCONT)
        self._signal(node, signal.SIGKILL)
        if node.proc is not None:
            node.proc.wait()
        else:
            t0 = time.time()
            while pid_alive(node.pid) and time.time() - t0 < 10:
                time.sleep(0.02)
        node.state = "killed"

    def stop(self, node):
        self._signal(node, signal.SIGSTOP)
        node.state = "stopped"

    def cont(self, node):
        self._signal(node, signal.SIGCONT)
        node.state = "up"

    def child_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        with open(os.path.join(self.dir, "cluster-secret")) as f:
            env[SECRET_ENV] = f.read().strip()
        return env

    def restart(self, node, wait=True, timeout=30):
        """Starts a killed node again with its recorded command line (in its
        network namespace, if it has one). Must be called from the main
        thread: PR_SET_PDEATHSIG follows the spawning thread."""
        assert node.state == "killed", node
        argv = with_flags(node.argv, node.overrides)
        if node.netns:
            argv = ["ip", "netns", "exec", node.netns] + argv
        log = open(node.log, "ab")
        log.write(f"===== chaos: restarting {node.name} at unix-ms {int(time.time() * 1000)} =====\n".encode())
        log.flush()
        node.proc = spawn(argv, log, self.child_env())
        log.close()
        node.pid = node.proc.pid
        node.state = "up"
        if wait:
            self.wait_accepting(node, timeout)

    def wait_accepting(self, node, timeout=30):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited with {node.proc.returncode} after a restart; "
                                   f"last lines of {node.log}:\n{tail(node.log)}")
            if self._accepting(node):
                return time.time() - t0
            time.sleep(0.05)
        raise RuntimeError(f"{node.name} not accepting {timeout}s after a restart")

    def _accepting(self, node):
        if node.accept_check is not None:
            return node.accept_check()
        return accepts(node.addr)

    # ---- admin ----------------------------------------------------------

    def admin(self, *args, timeout=20):
        cmd = [self.bin, "admin", "--cluster", os.path.join(self.dir, "cluster.json")] + list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")})

    def status(self, timeout=20):
        """`tessera admin status --json` as a dict, or None."""
        try:
            r = self.admin("status", "--json", timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        try:
            return json.loads(r.stdout)
        except json.JSONDecodeError:
            return None

    def leader(self):
        st = self.status()
        if st and st.get("leader"):
            return self.nodes.get(f"meta-{st['leader']['id']}")
        return None

    def storage_states(self, st=None):
        """{addr: state} from the cluster map."""
        st = st or self.status() or {}
        return {s["addr"]: s["state"] for s in st.get("storage") or []}

    def wait_storage_state(self, node, states, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.storage_states().get(node.addr) in states:
                return time.time() - t0
            time.sleep(0.5)
        return None

    def wait_all_storage_up(self, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            states = self.storage_states()
            if states and all(states.get(s.addr) == "up" for s in self.storage()):
                return time.time() - t0
            time.sleep(0.5)
        return None

    def storage_help(self):
        r = subprocess.run([self.bin, "storage", "--help"], capture_output=True, text=True)
        return r.stdout

    # ---- isolation helpers (root) ------------------------------------------

    def make_netns(self, name):
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.netns.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)

    def mount_tmpfs(self, path, size_bytes):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(os.path.dirname(path), "chaos-runner.pid"), "w") as f:
            f.write(f"{os.getpid()}\n")
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", path],
                       check=True, capture_output=True)
        self.mounts.append(path)

    def move_to_tmpfs(self, node, size_bytes):
        """Moves a killed storage node's data dir onto a tmpfs of `size_bytes`
        (a small disk that can really fill up: ENOSPC, not a simulation)."""
        assert node.state == "killed"
        d = node.data_dir
        saved = d + ".before-tmpfs"
        os.rename(d, saved)
        self.mount_tmpfs(d, size_bytes)
        subprocess.run(["cp", "-a", saved + "/.", d], check=True)
        shutil.rmtree(saved)


def scrape(addr, prefix):
    """Sum of the samples of metrics starting with `prefix` at addr/metrics."""
    try:
        body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
    except Exception:
        return None
    total, seen = 0.0, False
    for line in body.splitlines():
        if line.startswith(prefix):
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except ValueError:
                pass
    return total if seen else None


def with_flags(argv, flags):
    """argv with each `--flag value` of `flags` replaced, or appended."""
    out = list(argv)
    for flag, value in flags.items():
        if flag in out:
            out[out.index(flag) + 1] = str(value)
        else:
            out += [flag, str(value)]
    return out


def tail(path, lines=20):
    try:
        with open(path, "rb") as f:
            data = f.read()[-20000:]
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def reap_stale(log=print):
    """Removes what a SIGKILLed runner could not: its network namespaces
    (`tchaos-<pid>-<seed>`) and tmpfs mounts (under a directory holding
    `chaos-runner.pid`), when that runner is gone. Its processes died with it
    (PR_SET_PDEATHSIG)."""
    if os.geteuid() != 0:
        return
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "tchaos" and parts[1].isdigit() and not pid_alive(int(parts[1])):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            log(f"removed the network namespace {name} of a dead chaos run")
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[0] == "tmpfs"]
    except OSError:
        return
    for mnt in mounts:
        owner = os.path.join(os.path.dirname(mnt), "chaos-runner.pid")
        try:
            with open(owner) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if not pid_alive(pid):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
            log(f"unmounted the tmpfs {mnt} of a dead chaos run")


def privileged():
    """True when we can create network namespaces and mounts (root with
    CAP_SYS_ADMIN, as in CI containers run privileged)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = f"tessera-chaos-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    if r.returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True
