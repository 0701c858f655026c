# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations


class ModuleDocFragment:
    # The node modules' metrics option (mtls_csr_submit, mtls_cert_fetch): one definition in
    # Rust (common::metrics_textfile_option), one text here.
    DOCUMENTATION = r"""
options:
  metrics_textfile:
    description:
      - A file to write this node's certificate metrics to after the run, for node_exporter's textfile collector
        (name it C(*.prom) in the collector's directory) - notAfter and renewal time of the installed certificate, when
        the pending request was sent, and the last fetch's result with a refusal's reason code. Written atomically,
        mode V(0644), whatever the run's outcome; not in check mode.
      - The series and the alert rules shipped with the collection are described in C(docs/metrics.md).
      - A file that cannot be written is a warning; the run's work stands.
    type: path
"""
