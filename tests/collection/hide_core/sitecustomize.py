"""Test aid of tests/collection/test_ansible_core_compat.py: hide one ansible-core name from the
collection's action plugin, as a release that removed or moved it would. Put this directory on
PYTHONPATH of ansible-playbook and set one of:

  FLEETPKI_HIDE_CORE_SYMBOL=MODULE:NAME   delete NAME from MODULE (as 2.21 removed
                                          ansible.vars.clean.remove_internal_keys)
  FLEETPKI_HIDE_ACTIONBASE_METHOD=NAME    delete ActionBase.NAME as a class member; instances still
                                          reach it through __getattr__, so ansible-core's own code
                                          that calls it keeps working, as after a real refactor
                                          that moved it

Both happen right after ansible.plugins.action has been imported: ansible-core's own modules have
bound the names they import by then, and the collection's plugins are imported later.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "ansible.plugins.action"


def _hide(action_module) -> None:
    symbol = os.environ.get("FLEETPKI_HIDE_CORE_SYMBOL", "")
    if symbol:
        module_name, _, name = symbol.partition(":")
        delattr(importlib.import_module(module_name), name)
    method = os.environ.get("FLEETPKI_HIDE_ACTIONBASE_METHOD", "")
    if method:
        base = action_module.ActionBase
        function = base.__dict__[method]
        delattr(base, method)

        def __getattr__(self, attr):
            if attr == method:
                return function.__get__(self, type(self))
            raise AttributeError(attr)

        base.__getattr__ = __getattr__


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        exec_module = spec.loader.exec_module

        def exec_then_hide(module):
            exec_module(module)
            _hide(module)

        spec.loader.exec_module = exec_then_hide
        return spec


if os.environ.get("FLEETPKI_HIDE_CORE_SYMBOL") or os.environ.get("FLEETPKI_HIDE_ACTIONBASE_METHOD"):
    sys.meta_path.insert(0, _AfterImport())
