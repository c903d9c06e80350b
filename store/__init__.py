"""The result store: tables, migrations and the functions that read and write them."""
