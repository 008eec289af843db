"""One home for the label and annotation keys harden writes on images and artifacts and reads
back (container image labels, OCI manifest annotations of a VM template artifact).

The OCI keys are the image-spec's pre-defined annotations
(``org.opencontainers.image.*``); the ``dev.harden.*`` keys are harden's own.
"""

from __future__ import annotations

# OCI image-spec pre-defined annotation keys (also used as container image labels)
CREATED = "org.opencontainers.image.created"
TITLE = "org.opencontainers.image.title"
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"

# harden's own keys
DEFINITION = "dev.harden.definition"
BASELINE_ID = "dev.harden.baseline.id"
BASELINE_VERSION = "dev.harden.baseline.version"
BASELINE_DIGEST = "dev.harden.baseline.digest"
COMPLIANT = "dev.harden.compliant"
BUILD_KEY = "dev.harden.build-key"  # what a no-change rebuild compares
TEMPORARY = "dev.harden.temporary"  # containers harden starts and removes itself
