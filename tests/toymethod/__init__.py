"""A toy method kept outside fedgen, added by files alone (tests/test_registry.py): ``FEDGEN_METHODS=toymethod``
makes :mod:`fedgen.discovery` import it. It follows the README's "Adding a method" walk-through."""
