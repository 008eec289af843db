"""harden's OCI registry client: a raw protocol layer (:mod:`.client`) and a model layer
(:mod:`.model`: references, descriptors, referrers, copies) above it."""

from harden.oci.auth import Credentials, load_docker_credentials
from harden.oci.client import (
    PreconditionFailed,
    PutResult,
    RegistryAuthError,
    RegistryClient,
    RegistryNotFound,
)
from harden.oci.model import (
    ALL_MANIFEST_TYPES,
    EMPTY_DIGEST,
    EMPTY_MEDIA_TYPE,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    DigestMismatch,
    Manifest,
    Reference,
    copy_image,
    list_referrers,
    list_referrers_of_each,
    parse_reference,
    push_referrer,
    referrers_tag,
    resolve,
)

__all__ = [
    "ALL_MANIFEST_TYPES",
    "EMPTY_DIGEST",
    "EMPTY_MEDIA_TYPE",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Credentials",
    "Descriptor",
    "DigestMismatch",
    "Manifest",
    "PreconditionFailed",
    "PutResult",
    "Reference",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryNotFound",
    "copy_image",
    "list_referrers",
    "list_referrers_of_each",
    "load_docker_credentials",
    "parse_reference",
    "push_referrer",
    "referrers_tag",
    "resolve",
]
