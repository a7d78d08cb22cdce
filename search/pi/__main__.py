from search.pi.cli import entry

entry()
