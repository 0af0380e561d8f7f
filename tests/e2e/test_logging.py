#!/usr/bin/env python3
"""Logs reach somewhere: the start line on stderr, and on syslog when stderr is /dev/null.

Under dockerd a proxy's stderr is /dev/null, where lines are lost; portproxy then logs to
syslog (/dev/log), which journald collects where there is one. The syslog check runs in a
private mount namespace with its own /dev, so the host's /dev/log is never touched."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pp  # noqa: E402


def version():
    out = subprocess.run([pp.PORTPROXY, "-v"], capture_output=True, text=True, timeout=5)
    m = re.fullmatch(r"portproxy version (\d+\.\d+\.\d+)\n", out.stdout)
    assert m, f"-v printed {out.stdout!r}"
    return m.group(1)


class StartLine(unittest.TestCase):
    def test_version_matches_cmake_project(self):
        top = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        with open(os.path.join(top, "CMakeLists.txt")) as f:
            m = re.search(r"project\(portproxy VERSION (\S+)", f.read())
        self.assertEqual(version(), m.group(1))

    def test_start_line_on_stderr_names_mapping_and_version(self):
        backend = pp.EchoServer()
        self.addCleanup(backend.close)
        port = pp.free_port()
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", backend.port), stdio_null=False)
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "0", p.describe())
        p.stop()
        want = f"portproxy {version()}: tcp 127.0.0.1:{port} -> 127.0.0.1:{backend.port}"
        self.assertIn(want, p.stderr_text())


# Runs as root inside `unshare --mount`: a private /dev with null and a log socket.
SYSLOG_PROBE = textwrap.dedent(r"""
    import os, socket, subprocess, sys
    binary, port = sys.argv[1], sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/dev"], check=True)
    os.mknod("/dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod("/dev/null", 0o666)
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind("/dev/log")
    log.settimeout(5)
    devnull = os.open("/dev/null", os.O_RDWR)
    p = subprocess.Popen([binary, "-host-ip", "127.0.0.1", "-host-port", port,
                          "-container-ip", "127.0.0.1", "-container-port", "9"],
                         stdin=devnull, stdout=devnull, stderr=devnull)
    try:
        print(log.recv(4096).decode(errors="replace"))
    finally:
        p.terminate()
        p.wait(5)
""")


class Syslog(unittest.TestCase):
    def test_logs_go_to_syslog_when_stderr_is_dev_null(self):
        if os.geteuid() != 0:
            self.skipTest("needs root for a private mount namespace with its own /dev/log")
        if not shutil.which("unshare"):
            self.skipTest("needs unshare(1) from util-linux")
        out = subprocess.run(["unshare", "--mount", "--propagation", "private",
                              sys.executable, "-c", SYSLOG_PROBE, pp.PORTPROXY,
                              str(pp.free_port())],
                             capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        # RFC 3164 as glibc writes it: <priority>timestamp portproxy[pid]: message
        self.assertRegex(out.stdout, r"^<30>.*portproxy\[\d+\]: portproxy \d+\.\d+\.\d+: tcp "
                                     r"127\.0\.0\.1:\d+ -> 127\.0\.0\.1:9")


if __name__ == "__main__":
    unittest.main()
