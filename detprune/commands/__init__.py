"""One module per ``detprune`` subcommand; see ``detprune.cli`` for the contract."""
