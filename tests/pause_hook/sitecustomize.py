"""Test-only: stop a child process at a named function until the test kills or releases it.

A test puts this folder first on a child's ``PYTHONPATH`` (``tests/pause.py`` does), with
``TEST_PAUSE_AT=package.module:Qualified.name#n`` and ``TEST_PAUSE_SOCKET=<a Unix socket the
test listens on>``. Python imports ``sitecustomize`` at start-up in every interpreter,
Dagster's step processes included; when the named module is imported, its function is
wrapped so that its n-th call (1 if ``#n`` is left out), before it runs, connects to the
socket, says which process reached the point, and blocks until the test closes the
connection. The test thus holds its victim at a point it chose, instead of racing it.
Without ``TEST_PAUSE_AT`` this file does nothing.
"""

import functools
import importlib.abc
import json
import os
import socket
import sys
import threading


def _pause_before(fn, spec: str, nth: int, address: str):
    calls = 0
    lock = threading.Lock()

    @functools.wraps(fn)
    def paused(*args, **kwargs):
        nonlocal calls
        with lock:
            calls += 1
            reached = calls == nth
        if reached:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(address)
                conn.sendall(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "at": spec}).encode() + b"\n")
                while conn.recv(64):
                    pass
        return fn(*args, **kwargs)

    return paused


class _Wrapping(importlib.abc.Loader):
    """Executes the real module, then replaces the named function with its paused form."""

    def __init__(self, loader, qualname: str, wrap):
        self.loader, self.qualname, self.wrap = loader, qualname, wrap

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        *owners, name = self.qualname.split(".")
        owner = module
        for attribute in owners:
            owner = getattr(owner, attribute)
        setattr(owner, name, self.wrap(getattr(owner, name)))


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, qualname: str, wrap):
        self.module, self.qualname, self.wrap = module, qualname, wrap

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if finder is not self and find else None
            if spec is not None:
                spec.loader = _Wrapping(spec.loader, self.qualname, self.wrap)
                return spec
        return None


def _install() -> None:
    spec, address = os.environ.get("TEST_PAUSE_AT"), os.environ.get("TEST_PAUSE_SOCKET")
    if not spec or not address:
        return
    target, _, nth = spec.partition("#")
    module, _, qualname = target.partition(":")
    sys.meta_path.insert(0, _Finder(module, qualname, lambda fn: _pause_before(fn, spec, int(nth or 1), address)))


_install()
