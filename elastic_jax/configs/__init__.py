"""Named experiment configs (`--config tiny`): each file's get_config() returns an ml_collections.ConfigDict.
They ship in the package so a wheel finds them; the repository's configs/ links here."""
