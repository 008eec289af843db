"""`harden keygen`: make a signing key pair."""

from __future__ import annotations

from pathlib import Path

import click

from harden.cli.common import progress, tty_prompt


@click.command()
@click.option(
    "--type",
    "key_type",
    type=click.Choice(["ecdsa-p256", "ed25519"]),
    default="ecdsa-p256",
    show_default=True,
    help="Key algorithm. ECDSA P-256 is the key type cosign uses.",
)
@click.option(
    "--out",
    "out_prefix",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write PREFIX.key (encrypted PKCS#8 PEM, mode 0600) and PREFIX.pub (PEM).",
)
def keygen(key_type: str, out_prefix: Path) -> None:
    """Generate a signing key pair for attestations.

    The password comes from $HARDEN_KEY_PASSWORD, else a hidden prompt (asked twice).
    Existing files are never overwritten (exit 4). The public key path and its keyid
    (sha256 of the DER public key) are printed to stderr.
    """
    from harden.attest import keys

    password = keys.password_from_env_or_prompt(tty_prompt(confirm=True))
    key_path, pub_path = keys.keygen(keys.KeyType(key_type), out_prefix, password)
    pub = keys.load_public_key(pub_path)
    progress(f"private key: {key_path} (mode 0600, keep it secret)")
    progress(f"public key: {pub_path}")
    progress(f"keyid: {pub.keyid}")
