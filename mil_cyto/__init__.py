"""mil-cyto: weakly supervised attention-MIL for cervical cytology photos."""

__version__ = "0.1.0"
