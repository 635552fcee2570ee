"""The command-line layer: one thin module per command, flags generated from config dataclasses.

``mil-cyto COMMAND`` (:mod:`mil_cyto.cli.main`) dispatches to ``mil_cyto.cli.<command>``;
:mod:`mil_cyto.cli.options` turns a dataclass's fields (help text in their metadata) into
argparse flags and declares the options every command shares.
"""
