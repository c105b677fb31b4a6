"""Developer tooling: the local stack (``egress local up | bootstrap | publish``) and the
producers' side of the encrypted formats.

It imports the product and the product never imports it; only the command line's entry
point (``egress.cli``) adds its subcommands.
"""
