"""IO managers: how asset outputs are stored and loaded."""
