"""The commands of ``python -m allroads.llm`` (layer 7, beside ``__main__``): one module per command group."""
