from reallm_cli.cli.app import main

main()
