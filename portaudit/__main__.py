from portaudit.cli import main

main()
