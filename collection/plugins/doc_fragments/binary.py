# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations


class ModuleDocFragment:
    # What every fleetpki.mtls module is: a Rust binary (bin/<module>, which plugins/modules/<module>
    # links to), built by cargo-zigbuild against glibc 2.17. One note for all the modules, so the
    # claim is made once; the collection tests hold it to the binaries. No options of its own
    # (ansible-core wants the key in every fragment).
    DOCUMENTATION = r"""
options: {}
notes:
  - The module is a Linux x86_64 binary, dynamically linked against glibc 2.17 or newer (Amazon Linux 2, RHEL 7 and
    later, Debian 9 and later, Ubuntu 20.04 and later); a system with musl alone, such as Alpine, cannot run it. The
    module itself needs no Python on the host, but the roles' other tasks (file, copy, template, stat and the like)
    do, as any Ansible task does.
"""
