from bncheck.cli.app import main

main()
