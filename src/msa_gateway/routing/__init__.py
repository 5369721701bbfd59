"""Declarative routes: parsed with the config, compiled into a table with each snapshot."""
