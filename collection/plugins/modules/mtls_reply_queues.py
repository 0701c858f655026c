#!/usr/bin/python
# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

# Documentation only. The module itself is the Rust binary "mtls_reply_queues" next to this
# file (a symlink to bin/mtls_reply_queues); Ansible runs the extension-less binary.

# Python 2 boilerplate that ansible-test 2.16 still asks of every module file.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mtls_reply_queues
short_description: Delete the reply queues of instances that are gone
version_added: 0.1.0
author:
  - fleetpki contributors (!UNKNOWN)
description:
  - Each node creates its own reply queue (O(reply_queue_prefix) plus its instance id). An autoscaled
    fleet leaves one behind for every instance it retires. This module lists the queues with the
    prefix and deletes those whose instance id is not in O(keep_instance_ids), typically the fleet's
    inventory.
  - With O(keep_instance_ids), refuses to delete more than O(max_delete) queues in one run, and refuses an empty
    O(keep_instance_ids) unless O(force=true) (an inventory that failed to load gives an empty list), so a mistake
    in the inventory cannot wipe the fleet's queues.
  - With O(remove_instance_ids) instead, it deletes exactly the reply queues of those instances (looked up by
    name, without listing), as the P(fleetpki.mtls.mtls_client#role) role does with C(mtls_client_state=absent).
    Run again, it finds none and changes nothing.
  - In check mode it lists what it would delete and deletes nothing.
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetpki.mtls.aws
  - fleetpki.mtls.binary
options:
  keep_instance_ids:
    description:
      - Instance ids whose reply queues are kept; every other queue with O(reply_queue_prefix) is deleted.
      - Mutually exclusive with O(remove_instance_ids); one of them is required.
    type: list
    elements: str
  remove_instance_ids:
    description:
      - Instance ids whose reply queues are deleted; no other queue is touched.
      - Each must be an instance id (1 to 64 letters, digits, V(-) or V(_)), or nothing is deleted.
      - O(max_delete) and O(force) do not apply, since only the queues named are deleted.
      - Mutually exclusive with O(keep_instance_ids); one of them is required.
    type: list
    elements: str
  reply_queue_prefix:
    description:
      - Name prefix of the reply queues, as given to the node modules.
      - At least 4 characters, so that other applications' queues never match.
    type: str
    default: fleetpki-reply-
  max_delete:
    description:
      - Fail instead of deleting when more than this many queues would go.
    type: int
    default: 100
  force:
    description:
      - Delete every reply queue with the prefix when O(keep_instance_ids) is empty (a fleet that is gone).
        Without it an empty list fails and deletes nothing. O(max_delete) still applies.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Delete the reply queues of instances no longer in the inventory
  fleetpki.mtls.mtls_reply_queues:
    keep_instance_ids: "{{ groups['fleet'] | map('extract', hostvars, 'mtls_client_instance_id') | list }}"
    region: eu-west-1
  run_once: true

- name: Delete this node's own reply queue (the node is being retired)
  fleetpki.mtls.mtls_reply_queues:
    remove_instance_ids:
      - "{{ mtls_client_instance_id }}"
    region: eu-west-1
"""

RETURN = r"""
error:
  description:
    - When an AWS call failed, what amazon.aws returns beside C(msg) - C(kind) (V(no_credentials),
      V(bad_credentials), V(access_denied), V(throttling), V(unreachable), V(untrusted_certificate), V(not_found), V(region_mismatch) or
      V(other)), the service's C(code) (null when it gave none) and C(message) (or the SDK's whole error chain,
      which C(msg) leaves out), and the C(operation) that failed, when a call did.
  returned: when an SQS call, or a KMS or ACM PCA call that finds, creates or describes the signer, failed, or a queue URL names another region
  type: dict
  sample: {"kind": "access_denied", "code": "AccessDenied", "operation": "ListQueues",
           "message": "AccessDenied: User: arn:aws:iam::123456789012:user/node is not authorized to perform: sqs:ListQueues"}
deleted_queue_urls:
  description:
    - URLs of the queues deleted (in check mode, that would be deleted); on a failure with O(remove_instance_ids),
      those deleted before it.
  returned: always, and on a failure after some were deleted
  type: list
  elements: str
  sample: ["https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-reply-i-0123456789abcdef0"]
kept:
  description:
    - Number of reply queues kept (0 with O(remove_instance_ids)).
  returned: always
  type: int
  sample: 42
stale_queue_urls:
  description:
    - URLs of the queues not in O(keep_instance_ids), when their deletion was refused (an empty list without
      O(force), or more than O(max_delete)); nothing was deleted.
  returned: when the deletion is refused
  type: list
  elements: str
  sample: ["https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-reply-i-0123456789abcdef0"]
sqs_calls:
  description:
    - Number of SQS API calls made, by operation, and C(total).
  returned: always
  type: dict
  sample: {"ListQueues": 1, "DeleteQueue": 1, "total": 2}
"""
