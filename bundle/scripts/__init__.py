"""Python that the ISCL bundle's JSON configs cannot say (see ../configs/train.json)."""
