# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations


class ModuleDocFragment:
    # AWS connection options shared by every fleetpki.mtls module that talks to AWS (SQS, and
    # KMS / ACM PCA for the CA modules with signer=aws_kms or aws_pca).
    # Names and aliases follow amazon.aws. When an option is not set, the AWS SDK's
    # default chain applies (environment variables, shared config/credentials files,
    # then the instance profile).
    DOCUMENTATION = r"""
options:
  region:
    description:
      - The AWS region of the queues (and of the KMS key or Private CA of the CA modules).
      - When not set, E(AWS_REGION) or the region of the selected profile is used.
    type: str
    aliases: [aws_region, ec2_region]
  endpoint_url:
    description:
      - URL of the AWS endpoint to use instead of the region's default, for example a local test server.
        It applies to every AWS service the module calls (SQS, and KMS or ACM PCA for the CA modules with C(signer=aws_kms) or C(signer=aws_pca)).
      - When not set, the per-service E(AWS_ENDPOINT_URL_SQS), E(AWS_ENDPOINT_URL_KMS) or E(AWS_ENDPOINT_URL_ACM_PCA),
        or else E(AWS_ENDPOINT_URL), is used.
    type: str
    aliases: [aws_endpoint_url]
  profile:
    description:
      - Named profile of the shared AWS configuration and credentials files.
    type: str
    aliases: [aws_profile]
  access_key:
    description:
      - AWS access key ID.
      - When not set, the SDK's default credential chain is used (environment, profile, instance profile).
    type: str
    aliases: [aws_access_key_id, aws_access_key]
  secret_key:
    description:
      - AWS secret access key.
      - This value is secret (no_log), the module never returns or logs it.
    type: str
    aliases: [aws_secret_access_key, aws_secret_key]
  session_token:
    description:
      - AWS session token for temporary credentials.
      - This value is secret (no_log), the module never returns or logs it.
    type: str
    aliases: [aws_session_token]
notes:
  - The AWS options follow the naming of the amazon.aws collection; unset options fall back to the AWS SDK's
    default configuration and credential chain, so an instance profile needs no option at all.
"""
