"""The one place fedgen touches its libraries' private or semi-private names: :mod:`fedgen.compat.flower` for
Flower, :mod:`fedgen.compat.opacus` for opacus. Everything else imports only their public API (a test checks), and
``tests/test_compat.py`` fails, naming the symbol, when an upgrade removes or changes one of these."""
