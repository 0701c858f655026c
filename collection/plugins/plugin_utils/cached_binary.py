# Copyright: fleetpki contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a binary module from a copy cached on the host, its arguments on stdin.

Ansible runs a binary module by transferring it on every task (5 MB here, compressed again by
SSH every time), then its arguments file, then `chmod`, then running it, then removing the
temporary directory: six remote operations. The binaries never change within a release, so this
action keeps one copy per host, named by its SHA-256, and runs it in one remote command (HIT).
On a miss, a second command (INSTALL) gets the binary and then the arguments on stdin: it writes
the binary into the cache directory under a temporary name, checks it, renames it into place and
runs it. Nothing else travels: no temporary directory, no sftp, no chmod.

The cache is `<remote_tmp>/fleetpki.mtls-modules/` of the user that runs the module (after
`become`). A copy runs only if its directory belongs to that user with mode 0700, and the file
itself, opened once, belongs to that user with mode 0700 and has the SHA-256 of the controller's
binary. What runs is that open file (`/dev/fd/3`), not its path again: a file swapped in after the
check is never run. The arguments go from stdin straight to the module and never through the
shell or a command line. The module runs with the login umask, as on Ansible's standard path.

Ansible's standard path (`_execute_module`) is used, and nothing is cached, when
`fleetpki_mtls_module_cache` is false; the task is async; ANSIBLE_KEEP_REMOTE_FILES is set; the
shell is not POSIX sh; the connection cannot send stdin (no pipelining support); `become` is used
without pipelining enabled (sudo's `requiretty` breaks stdin exactly as it breaks pipelining,
which is why Ansible makes pipelining opt-in); the host lacks the GNU tools the checks use;
nothing can be written under remote_tmp as the user that runs the module; or this ansible-core
lacks, or has changed, one of the internals the cached path calls (_core_api() looks them all up
before anything runs on the host; 2.16 to 2.21 are tested, each in its own shape). The standard
path is that release's own `normal` action, as if the collection had no action plugin.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Public, long-stable names only at import time: whatever else the cached path needs from
# ansible-core is looked up per task by _core_api(), so that a release that moved it sends the
# task down the standard path instead of failing the import of every module's action.
from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

CACHE_DIR_NAME = "fleetpki.mtls-modules"
CACHE_VAR = "fleetpki_mtls_module_cache"
# Lines the remote commands print instead of running the module.
CACHE_MISS = "FLEETPKI_MTLS_MODULE_CACHE_MISS"  # no usable cached copy: send the binary
CACHE_UNAVAILABLE = "FLEETPKI_MTLS_MODULE_CACHE_UNAVAILABLE"  # take Ansible's standard path

# Both commands start with this. `usable P`: P belongs to the running user with mode 0700 (GNU
# stat; the binaries are Linux/glibc only, and hosts without these tools take the standard path).
# `sha F`: F's SHA-256. The login umask is kept in $o for the module.
_PROLOGUE = """\
for tool in stat sha256sum head cut id mktemp find; do
  command -v "$tool" >/dev/null 2>&1 || { echo %(unavailable)s; exit 0; }
done
o=$(umask); umask 077
usable() { [ "$(stat -L -c %%u:%%a -- "$1" 2>/dev/null)" = "$(id -u):700" ]; }
sha() { sha256sum < "$1" 2>/dev/null | cut -d " " -f 1; }
b="$(echo %(remote_tmp)s)"; d="$b/%(cache_dir)s"; f="$d"/%(name)s-%(digest)s
"""

# stdin: the arguments. Runs the cached copy through the descriptor it was checked on.
_HIT = """\
m=1; rc=0
if usable "$d" && [ -f "$f" ]; then
  { if usable /dev/fd/3 && [ "$(sha /dev/fd/3)" = %(digest)s ]; then
      m=0; umask "$o"; %(env)s /dev/fd/3 -; rc=$?
    fi; } 3< "$f"
fi
[ "$m" = 0 ] || echo %(miss)s
(exit "$rc")
"""

# stdin: the binary (%(size)s bytes), then the arguments. A cache directory of another owner or
# mode is left alone: the binary then goes to a private directory for this run only.
_INSTALL = """\
w=""; p=""; rc=1
mkdir -p -- "$d" 2>/dev/null
if usable "$d"; then
  p="$d"/.%(name)s.$$
  # Partial copies of interrupted runs; other releases once a day old (a controller still on
  # one of them may be about to run its copy).
  find "$d" -maxdepth 1 -type f -name %(partial_glob)s -mmin +60 -exec rm -f -- {} + 2>/dev/null
  find "$d" -maxdepth 1 -type f -name %(release_glob)s ! -name %(name)s-%(digest)s -mmin +1440 -exec rm -f -- {} + 2>/dev/null
else
  w="$(mktemp -d "$b/fleetpki.mtls-XXXXXXXX" 2>/dev/null)" && p="$w"/%(name)s
fi
if [ -n "$p" ] && head -c %(size)s > "$p" && chmod 0700 "$p"; then
  { if usable /dev/fd/3 && [ "$(sha /dev/fd/3)" = %(digest)s ]; then
      [ -n "$w" ] || mv -f -- "$p" "$f"
      umask "$o"; %(env)s /dev/fd/3 -; rc=$?
    else
      cat > /dev/null; printf "%%s\\n" %(altered)s
    fi; } 3< "$p"
else
  cat > /dev/null; echo %(unavailable)s; rc=0
fi
[ -z "$p" ] || rm -f -- "$p"
[ -z "$w" ] || rm -rf -- "$w"
(exit "$rc")
"""


class _Unsupported(Exception):
    """What this ansible-core lacks for the module cache: the task takes the standard path."""


def _core_version() -> str:
    try:
        return importlib.import_module("ansible.release").__version__
    except (ImportError, AttributeError):
        return "(unknown version)"


def _symbol(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise _Unsupported(f"ansible-core {_core_version()} has no {module}.{name}") from None


def _optional_symbol(module: str, name: str):
    try:
        return _symbol(module, name)
    except _Unsupported:
        return None


def _require_method(name: str, *params: str) -> None:
    """ActionBase has method `name` (as a class member) taking `params`."""
    member = inspect.getattr_static(ActionBase, name, None)
    if not callable(member):
        raise _Unsupported(f"ansible-core {_core_version()}'s ActionBase has no method {name}()")
    try:
        accepted = inspect.signature(member).parameters
    except (TypeError, ValueError):
        raise _Unsupported(f"ansible-core {_core_version()}'s ActionBase.{name}() has no readable signature") from None
    missing = [p for p in params if p not in accepted]
    if missing:
        raise _Unsupported(f"ansible-core {_core_version()}'s ActionBase.{name}() takes no {', '.join(missing)}")


@dataclass(frozen=True)
class _CoreApi:
    """How this ansible-core's internals are called by the cached path (they differ by release)."""

    # (module's configuration from _configure_module, task arguments) -> the arguments' JSON
    encode_args: Callable[[object, dict], bytes]
    # (action, _low_level_execute_command's result, module's configuration) -> the task result
    finish: Callable[[ActionBase, dict, object], dict]


@dataclass(frozen=True)
class _Configured:
    """What _configure_module says about the module, in any release's shape."""

    style: str
    path: str
    profile: str | None  # 2.19+: the serialization profile of its arguments and result


def _core_api() -> _CoreApi:
    """The calls the cached path makes into this ansible-core, or _Unsupported naming what is
    missing. Checked before anything runs on the host, so the standard path is still open."""
    _require_method("_update_module_args", "module_name", "module_args", "task_vars")
    _require_method("_configure_module", "module_name", "module_args", "task_vars")
    _require_method("_compute_environment_string")
    _require_method("get_shell_option", "option", "default")
    _require_method("_low_level_execute_command", "cmd", "in_data")
    _require_method("_parse_returned_data", "res")
    # ansible-core 2.19 added per-profile JSON for module arguments and results.
    with_profiles = "profile" in inspect.signature(ActionBase._parse_returned_data).parameters

    if with_profiles:
        get_module_encoder = _symbol("ansible.module_utils.common.json", "get_module_encoder")
        to_module = getattr(_symbol("ansible.module_utils.common.json", "Direction"), "CONTROLLER_TO_MODULE", None)
        if to_module is None:
            raise _Unsupported(f"ansible-core {_core_version()} has no Direction.CONTROLLER_TO_MODULE")

        def encode_args(configured: _Configured, args: dict) -> bytes:
            if not configured.profile:
                raise _Unsupported(f"ansible-core {_core_version()} names no serialization profile for the module")
            return json.dumps(args, cls=get_module_encoder(configured.profile, to_module)).encode()

        def parse(action: ActionBase, res: dict, configured: _Configured):
            return action._parse_returned_data(res, configured.profile)

    else:  # 2.16-2.18: plain JSON, as their _execute_module writes the args file

        def encode_args(configured: _Configured, args: dict) -> bytes:
            return json.dumps(args).encode()

        def parse(action: ActionBase, res: dict, configured: _Configured):
            return action._parse_returned_data(res)

    # What _execute_module does to the parsed result before returning it: 2.21 returns a task
    # result object, 2.16-2.20 a dict. Both ways are resolved now, while the standard path is
    # still open; the parsed result's own shape picks one after the run.
    task_result = _optional_symbol("ansible._internal._task", "UnifiedTaskResult")
    if task_result is not None:
        for method, params in (("remove_internal_keys", ()), ("as_result_dict", ("for_round_trip",))):
            member = getattr(task_result, method, None)
            if not callable(member) or any(p not in inspect.signature(member).parameters for p in params):
                raise _Unsupported(f"ansible-core {_core_version()}'s UnifiedTaskResult.{method}() is not the one this collection knows")
    remove_internal_keys = _optional_symbol("ansible.vars.clean", "remove_internal_keys")
    if task_result is None and remove_internal_keys is None:
        raise _Unsupported(f"ansible-core {_core_version()} has no ansible.vars.clean.remove_internal_keys")
    # Before data tagging (2.19), results were marked unsafe for templating by wrap_var.
    wrap_var = (lambda data: data) if with_profiles else _symbol("ansible.utils.unsafe_proxy", "wrap_var")

    def clean(parsed) -> dict:
        if task_result is not None and isinstance(parsed, task_result):
            parsed.remove_internal_keys()
            return parsed.as_result_dict(for_round_trip=True)
        if remove_internal_keys is not None and isinstance(parsed, Mapping):
            parsed.pop("_ansible_suppress_tmpdir_delete", None)
            remove_internal_keys(parsed)
            return wrap_var(parsed)
        raise _unknown_result()

    def finish(action: ActionBase, res: dict, configured: _Configured) -> dict:
        return clean(parse(action, res, configured))

    return _CoreApi(encode_args=encode_args, finish=finish)


def _unknown_result() -> AnsibleActionFail:
    # The module has run: running it again by the standard path could repeat what it did.
    return AnsibleActionFail(
        f"fleetpki.mtls: the module ran, but ansible-core {_core_version()} returned its result in a form this "
        "collection does not know: set fleetpki_mtls_module_cache: false for this host and run the task again"
    )


def _configured(value) -> _Configured:
    """_configure_module's answer: (module_bits, path) since 2.19, (style, shebang, data, path) before."""
    if isinstance(value, tuple) and len(value) == 2 and hasattr(value[0], "module_style"):
        bits, path = value
        return _Configured(style=bits.module_style, path=path, profile=getattr(bits, "serialization_profile", None))
    if isinstance(value, tuple) and len(value) == 4 and isinstance(value[0], str):
        return _Configured(style=value[0], path=value[3], profile=None)
    raise _Unsupported(f"ansible-core {_core_version()}'s _configure_module() answers in a form this collection does not know")


class CachedBinaryAction(ActionBase):
    """The action of every fleetpki.mtls module (`plugins/action/<module>.py` imports it)."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        why_standard = self._why_standard_path(task_vars)
        core = None
        if why_standard is None:
            try:
                core = _core_api()
            except _Unsupported as missing:
                why_standard = str(missing)
        if why_standard is not None:
            return self._run_standard(tmp, task_vars, why_standard)

        result = super().run(tmp, task_vars)
        del tmp
        try:
            outcome = self._run_cached(core, task_vars)
        except _Unsupported as missing:
            return self._run_standard(None, task_vars, str(missing))
        if outcome is None:
            return self._run_standard(None, task_vars, "the host cannot keep it (GNU tools missing, or remote_tmp not writable)")
        return {**result, **outcome}

    def _run_standard(self, tmp, task_vars, why: str) -> dict:
        """Ansible's own way for a binary module: this release's `normal` action, as if the
        collection had no action plugin."""
        display.vvv(f"fleetpki.mtls: module cache not used: {why}")
        normal = self._shared_loader_obj.action_loader.get(
            "ansible.legacy.normal",
            task=self._task,
            connection=self._connection,
            play_context=self._play_context,
            loader=self._loader,
            templar=self._templar,
            shared_loader_obj=self._shared_loader_obj,
        )
        return normal.run(tmp, task_vars)

    def _why_standard_path(self, task_vars) -> str | None:
        """Why this task must take Ansible's standard path, or None when the cache can be used."""
        host_vars = task_vars
        if self._task.delegate_to:  # the host the module runs on decides, as for its interpreter
            host_vars = task_vars.get("ansible_delegated_vars", {}).get(self._task.delegate_to, task_vars)
        wanted = self._templar.template(host_vars.get(CACHE_VAR, True))
        if not boolean(wanted, strict=False):
            return f"{CACHE_VAR} is false"
        if self._task.async_val:
            return "async task"
        if C.DEFAULT_KEEP_REMOTE_FILES:
            return "ANSIBLE_KEEP_REMOTE_FILES is set"
        shell = getattr(self._connection, "_shell", None)
        if getattr(shell, "SHELL_FAMILY", None) != "sh" or not callable(getattr(shell, "quote", None)):
            return "the remote shell is not POSIX sh"
        if not self._connection.has_pipelining:
            return f"the {self._connection.transport} connection cannot send stdin"
        if self._connection.become and not self._pipelining_enabled():
            return "become without pipelining (enable pipelining to use the module cache with become)"
        return None

    def _pipelining_enabled(self) -> bool:
        if callable(getattr(self._connection, "is_pipelining_enabled", None)):  # 2.19+
            return self._connection.is_pipelining_enabled()
        # Older cores decide it in the action, for a module style that can pipeline.
        return self._is_pipelining_enabled("new")

    def _run_cached(self, core: _CoreApi, task_vars) -> dict | None:
        """The module's result, or None when the host cannot keep the cache (standard path).
        Raises _Unsupported, before anything runs on the host, when this core answers unexpectedly."""
        module_name = self._task.action
        module_args = dict(self._task.args)
        self._update_module_args(module_name, module_args, task_vars)
        configured = _configured(self._configure_module(module_name=module_name, module_args=module_args, task_vars=task_vars))
        if configured.style != "binary":
            raise AnsibleActionFail(f"fleetpki.mtls: {module_name} is not a binary module ({configured.path}): reinstall the collection")
        self._used_interpreter = None
        args_json = core.encode_args(configured, module_args)

        name = os.path.basename(configured.path)
        with open(configured.path, "rb") as binary:
            module_data = binary.read()
        digest = hashlib.sha256(module_data).hexdigest()
        quote = self._connection._shell.quote
        values = {
            "unavailable": CACHE_UNAVAILABLE,
            "miss": CACHE_MISS,
            # Expanded by the remote shell, as Ansible's own mkdtemp expands it (but as the user
            # that runs the module: the cache is that user's).
            "remote_tmp": self.get_shell_option("remote_tmp", default="~/.ansible/tmp"),
            "cache_dir": CACHE_DIR_NAME,
            "name": quote(name),
            "digest": digest,
            "size": len(module_data),
            "env": self._compute_environment_string(),
            "partial_glob": quote(f".{name}.*"),
            "release_glob": quote(f"{name}-*"),
            "altered": quote(json.dumps({"failed": True, "msg": (
                f"fleetpki.mtls: {name} arrived on the host with another SHA-256 than the controller's binary "
                f"({digest}): check the host's free space under remote_tmp, then run the task again"
            )})),
        }

        # No final newline: Ansible appends " && sleep 0" to the command, which must join its last
        # line (on a line of its own it is a syntax error, and the shell's exit status 2 would
        # replace the module's).
        res = self._low_level_execute_command(((_PROLOGUE + _HIT) % values).rstrip("\n"), in_data=args_json)
        if _printed(res, CACHE_MISS):
            display.vvv(f"fleetpki.mtls: {name} is not cached on this host: sending it ({len(module_data)} bytes)")
            res = self._low_level_execute_command(((_PROLOGUE + _INSTALL) % values).rstrip("\n"), in_data=module_data + args_json)
        elif not _printed(res, CACHE_UNAVAILABLE):
            display.vvv(f"fleetpki.mtls: ran {name} from the module cache")
        if _printed(res, CACHE_UNAVAILABLE):
            return None
        return core.finish(self, res, configured)


def _printed(res: dict, marker: str) -> bool:
    """The remote command printed `marker` on a line of its own (a login banner may come first)."""
    return marker in (line.strip() for line in res.get("stdout", "").splitlines())
