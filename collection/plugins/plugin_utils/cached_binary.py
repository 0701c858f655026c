# Copyright: fleetpki.mtls contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a binary module from a copy cached on the host, its arguments on stdin.

Ansible runs a binary module by transferring it on every task (5 MB here, compressed again by
SSH every time), then its arguments file, then `chmod`, then running it, then removing the
temporary directory: six remote operations. The binaries never change within a release, so this
action keeps one copy per host, named by its SHA-256, and runs it in one remote command:

    if the cached copy is usable: run it with the arguments on stdin; else print CACHE_MISS

On a miss, a second command gets the arguments line and then the binary on stdin: it writes the
binary into the cache directory under a temporary name, checks its SHA-256, renames it into place,
removes copies of other releases of the module older than a day, and runs it. Nothing else travels: no temporary
directory, no sftp, no chmod.

The cache is `<remote_tmp>/fleetpki.mtls-modules/` of the user that runs the module (after
`become`), inside the directory Ansible itself trusts for its temporary files, with `remote_tmp`
expanded by the remote shell as Ansible's own mkdtemp does. A copy is run only if it and its
directory belong to that user with mode 0700 and its SHA-256 is the controller's binary's: a
stray, truncated or swapped file is never run. If the directory is not usable (another owner or
mode) it is left alone and the binary goes to a private temporary directory under remote_tmp
for this one run.

Ansible's standard path (`_execute_module`) is used, and nothing is cached, when
`fleetpki_mtls_module_cache` is false; the task is async; ANSIBLE_KEEP_REMOTE_FILES is set; the
shell is not POSIX sh; the connection cannot send stdin (no pipelining support); or `become` is
used without pipelining enabled (sudo's `requiretty` breaks stdin exactly as it breaks
pipelining, which is why Ansible makes pipelining opt-in).
"""

from __future__ import annotations

import hashlib
import json
import os

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash
from ansible.vars.clean import remove_internal_keys

try:  # ansible-core >= 2.19: module arguments are encoded per serialization profile
    from ansible.module_utils.common.json import Direction, get_module_encoder
except ImportError:  # older cores: the standard path only
    get_module_encoder = None

display = Display()

CACHE_DIR_NAME = "fleetpki.mtls-modules"
# Printed by the remote check instead of running anything: the cached copy is not usable.
CACHE_MISS = "FLEETPKI_MTLS_MODULE_CACHE_MISS"
CACHE_VAR = "fleetpki_mtls_module_cache"

# Sourced by both remote commands. `usable P` holds when P belongs to the running user and has
# mode 0700 (GNU stat: the binaries are Linux/glibc only); `sha F` prints F's SHA-256.
_SHELL_HELPERS = (
    "umask 077; "
    'usable() { [ "$(stat -c %u:%a -- "$1" 2>/dev/null)" = "$(id -u):700" ]; }; '
    'sha() { sha256sum < "$1" 2>/dev/null | cut -d " " -f 1; }; '
)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as binary:
        for block in iter(lambda: binary.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CachedBinaryAction(ActionBase):
    """The action of every fleetpki.mtls module (`plugins/action/<module>.py` imports it)."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        why_standard = self._why_standard_path(task_vars)
        if why_standard:
            display.vvv(f"fleetpki.mtls: module cache not used: {why_standard}")
            wrap_async = self._task.async_val and not self._connection.has_native_async
            result = merge_hash(result, self._execute_module(task_vars=task_vars, wrap_async=wrap_async))
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        return merge_hash(result, self._run_cached(task_vars))

    def _why_standard_path(self, task_vars) -> str | None:
        """Why this task must take Ansible's standard path, or None when the cache can be used."""
        wanted = self._templar.template(task_vars.get(CACHE_VAR, True))
        if not boolean(wanted, strict=False):
            return f"{CACHE_VAR} is false"
        if get_module_encoder is None:
            return "ansible-core older than 2.19"
        if self._task.async_val:
            return "async task"
        if C.DEFAULT_KEEP_REMOTE_FILES:
            return "ANSIBLE_KEEP_REMOTE_FILES is set"
        if getattr(self._connection._shell, "SHELL_FAMILY", None) != "sh":
            return "the remote shell is not POSIX sh"
        if not self._connection.has_pipelining:
            return f"the {self._connection.transport} connection cannot send stdin"
        if self._connection.become and not self._connection.is_pipelining_enabled():
            return "become without pipelining (enable pipelining to use the module cache with become)"
        return None

    def _run_cached(self, task_vars) -> dict:
        module_name = self._task.action
        module_args = dict(self._task.args)
        self._update_module_args(module_name, module_args, task_vars)
        module_bits, module_path = self._configure_module(module_name=module_name, module_args=module_args, task_vars=task_vars)
        if module_bits.module_style != "binary":
            raise AnsibleActionFail(f"fleetpki.mtls: {module_name} is not a binary module ({module_path}): reinstall the collection")
        self._used_interpreter = None
        encoder = get_module_encoder(module_bits.serialization_profile, Direction.CONTROLLER_TO_MODULE)
        # One line: json.dumps escapes every newline inside strings.
        args_line = json.dumps(module_args, cls=encoder).encode() + b"\n"

        name = os.path.basename(module_path)
        digest = _file_sha256(module_path)
        quote = self._connection._shell.quote
        remote_tmp = self.get_shell_option("remote_tmp", default="~/.ansible/tmp")
        # The remote_tmp setting is expanded by the remote shell, as Ansible's own mkdtemp does.
        prologue = (
            _SHELL_HELPERS
            + f'b="$(echo {remote_tmp})"; d="$b/{CACHE_DIR_NAME}"; f="$d"/{quote(f"{name}-{digest}")}; '
        )
        env_string = self._compute_environment_string()

        hit = prologue + (
            f'if usable "$d" && usable "$f" && [ "$(sha "$f")" = {digest} ]; '
            f'then {env_string} "$f" -; else echo {CACHE_MISS}; fi'
        )
        res = self._low_level_execute_command(hit, in_data=args_line)
        if res["stdout"].strip() == CACHE_MISS:
            with open(module_path, "rb") as binary:
                module_data = binary.read()
            display.vvv(f"fleetpki.mtls: {name} is not cached on this host: sending it ({len(module_data)} bytes)")
            res = self._low_level_execute_command(prologue + self._install_and_run(name, digest, env_string), in_data=args_line + module_data)
        else:
            display.vvv(f"fleetpki.mtls: ran {name} from the module cache")

        data = self._parse_returned_data(res, module_bits.serialization_profile)
        remove_internal_keys(data)
        return data

    def _install_and_run(self, name: str, digest: str, env_string: str) -> str:
        """The miss command; stdin is the arguments line, then the binary."""
        quote = self._connection._shell.quote
        failed = json.dumps({"failed": True, "msg": (
            f"fleetpki.mtls: {name} arrived on the host with another SHA-256 than the controller's binary, "
            "or could not be written under remote_tmp: check the free space and permissions of remote_tmp, "
            "then run the task again"
        )})
        return (
            # `read` takes exactly the first line (shells read pipes byte by byte); cat the rest.
            'IFS= read -r args; w=""; p=""; mkdir -p -- "$d" 2>/dev/null; '
            # A cache directory of someone else or with another mode is left alone: this run
            # uses a private directory under remote_tmp instead.
            f'if usable "$d"; then p="$d"/.{quote(name)}.$$; '
            f'else w="$(mktemp -d "$b/fleetpki.mtls-XXXXXXXX")" && p="$w"/{quote(name)}; fi; '
            'if [ -n "$p" ] && cat > "$p" && chmod 0700 "$p" && [ "$(sha "$p")" = ' + digest + ' ]; then '
            '  if [ -z "$w" ] && mv -f -- "$p" "$f"; then p="$f"; '
            # Copies of other releases go once a day old: a second controller on another
            # release may be about to run its copy right now.
            f'    find "$d" -maxdepth 1 -type f -name {quote(name + "-*")} ! -name {quote(f"{name}-{digest}")} -mmin +1440 -exec rm -f -- {{}} + 2>/dev/null; '
            '  fi; '
            f'  printf "%s\\n" "$args" | {env_string} "$p" -; rc=$?; '
            f'else cat > /dev/null; printf "%s\\n" {quote(failed)}; rc=1; fi; '
            '[ -z "$w" ] || rm -rf -- "$w"; [ -z "$p" ] || [ "$p" = "$f" ] || rm -f -- "$p"; (exit $rc)'
        )
