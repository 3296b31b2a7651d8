"""An ift instruction source reading records from a SQL database: the ``sql`` entry point of ``ift``."""
