"""Command line of ramen: a thin Typer layer over ``ramen_core``."""
