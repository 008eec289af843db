"""harden's use-case layer: one function per user act, callable without the command line.

The CLI (``harden.cli``) and any future service only parse, call one of these, render the result
and pick an exit code. Each use case takes its collaborators in a :class:`~harden.app.context.
Context` (clock, audit log, registry client factory, progress callback), returns a typed result,
raises :class:`~harden.errors.HardenError` and writes its own audit entry::

    from pathlib import Path

    from harden.app.build import build
    from harden.app.context import Context
    from harden.app.promote import promote
    from harden.attest.keys import load_public_key, load_signer
    from harden.baseline.resolve import Catalogue
    from harden.imagedef import load_definition

    ctx = Context.from_environment(progress=print)
    definition = load_definition(Path("images/debian12.yaml"))
    built = build(definition, Catalogue.from_search_path(), ctx,
                  signer=load_signer("file:signing.key", b"password"))
    if built.compliant:
        promote(definition.doc.destination, definition.doc.promote_to,
                [load_public_key(Path("signing.pub"))], ctx)

Modules: :mod:`.build` (build and publish, container or VM), :mod:`.verify` (verify a reference;
the openers that turn a reference into a Target), :mod:`.attest` (attest, list and verify
attestations), :mod:`.revoke`, :mod:`.promote`, :mod:`.status` (status, plan, rebuild),
:mod:`.evidence`. docs/architecture.md has the layers and a tested example.
"""
