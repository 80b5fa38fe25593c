from bncheck.cli import console

console()
