"""harden: hardened, verified, signed golden images for containers and VM templates."""

__version__ = "0.1.0"
