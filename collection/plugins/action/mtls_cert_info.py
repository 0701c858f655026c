# Copyright: fleetpki contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action of fleetpki.mtls.mtls_cert_info: runs the module binary from a copy cached on the host."""

from __future__ import annotations

from ansible_collections.fleetpki.mtls.plugins.plugin_utils.cached_binary import CachedBinaryAction


class ActionModule(CachedBinaryAction):
    """See plugins/plugin_utils/cached_binary.py."""
