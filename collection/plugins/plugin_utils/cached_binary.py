# Copyright: fleetpki.mtls contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
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
which is why Ansible makes pipelining opt-in); the host lacks the GNU tools the checks use; or
nothing can be written under remote_tmp as the user that runs the module.
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


class CachedBinaryAction(ActionBase):
    """The action of every fleetpki.mtls module (`plugins/action/<module>.py` imports it)."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        why_standard = self._why_standard_path(task_vars)
        outcome = None if why_standard else self._run_cached(task_vars)
        if outcome is None:
            outcome = self._run_standard(task_vars, why_standard or "the host cannot keep it (GNU tools missing, or remote_tmp not writable)")
        return merge_hash(result, outcome)

    def _run_standard(self, task_vars, why: str) -> dict:
        display.vvv(f"fleetpki.mtls: module cache not used: {why}")
        wrap_async = self._task.async_val and not self._connection.has_native_async
        result = self._execute_module(task_vars=task_vars, wrap_async=wrap_async)
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _why_standard_path(self, task_vars) -> str | None:
        """Why this task must take Ansible's standard path, or None when the cache can be used."""
        host_vars = task_vars
        if self._task.delegate_to:  # the host the module runs on decides, as for its interpreter
            host_vars = task_vars.get("ansible_delegated_vars", {}).get(self._task.delegate_to, task_vars)
        wanted = self._templar.template(host_vars.get(CACHE_VAR, True))
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

    def _run_cached(self, task_vars) -> dict | None:
        """The module's result, or None when the host cannot keep the cache (standard path)."""
        module_name = self._task.action
        module_args = dict(self._task.args)
        self._update_module_args(module_name, module_args, task_vars)
        module_bits, module_path = self._configure_module(module_name=module_name, module_args=module_args, task_vars=task_vars)
        if module_bits.module_style != "binary":
            raise AnsibleActionFail(f"fleetpki.mtls: {module_name} is not a binary module ({module_path}): reinstall the collection")
        self._used_interpreter = None
        encoder = get_module_encoder(module_bits.serialization_profile, Direction.CONTROLLER_TO_MODULE)
        args_json = json.dumps(module_args, cls=encoder).encode()

        name = os.path.basename(module_path)
        with open(module_path, "rb") as binary:
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

        res = self._low_level_execute_command((_PROLOGUE + _HIT) % values, in_data=args_json)
        if _printed(res, CACHE_MISS):
            display.vvv(f"fleetpki.mtls: {name} is not cached on this host: sending it ({len(module_data)} bytes)")
            res = self._low_level_execute_command((_PROLOGUE + _INSTALL) % values, in_data=module_data + args_json)
        elif not _printed(res, CACHE_UNAVAILABLE):
            display.vvv(f"fleetpki.mtls: ran {name} from the module cache")
        if _printed(res, CACHE_UNAVAILABLE):
            return None

        data = self._parse_returned_data(res, module_bits.serialization_profile)
        remove_internal_keys(data)
        return data


def _printed(res: dict, marker: str) -> bool:
    """The remote command printed `marker` on a line of its own (a login banner may come first)."""
    return marker in (line.strip() for line in res.get("stdout", "").splitlines())
