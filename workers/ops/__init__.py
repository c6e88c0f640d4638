"""Operations: replay, dead-letter redrive, consumer lag, message contracts.

Each module keeps a small pure core (unit-tested) apart from its Kafka and database I/O;
the CLI commands in ``workers/cli.py`` only parse options and print.
"""
