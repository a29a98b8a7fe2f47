from digest_mailer.cli import main

main()
