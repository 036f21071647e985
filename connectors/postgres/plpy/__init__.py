"""Python that runs inside the database (PL/Python): ``qvl_lib.py``, installed by ``qvl pg install``."""
