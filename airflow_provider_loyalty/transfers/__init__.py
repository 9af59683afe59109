"""transfers of the loyalty provider."""
