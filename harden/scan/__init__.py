"""An OpenSCAP second opinion: the scan result model and score (:mod:`harden.scan.model`), the
ARF reader (:mod:`harden.scan.arf`), safe unpacking of a container export
(:mod:`harden.scan.rootfs`) and the harden/SSG agreement check (:mod:`harden.scan.agreement`).
Running the scanner is the adapter :mod:`builder.openscap`.
"""
