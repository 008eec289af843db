"""Debian facts harden reads itself: the dpkg database, apt sources, signed archive indices."""
