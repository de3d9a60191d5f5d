from kdexp.cli import main

main()
