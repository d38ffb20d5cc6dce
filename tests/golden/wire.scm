;;; wire.scm -- client side of the wire captures.
;;;
;;; Runs with GUIX_DAEMON_SOCKET pointing at the recording proxy (record.py),
;;; so every byte exchanged here is logged.  The connections are opened one
;;; after the other, never overlapping, so connection N of the capture is
;;; entry N of the plan this script writes: per connection a label, a
;;; description, the steps taken and the exchange labels record.py must find
;;; (one per request; a mismatch fails the generator).  Registration times are
;;; set to 1 through SQLite before any query-path-info so that its reply is
;;; deterministic.

(load (string-append (dirname (current-filename)) "/common.scm"))
(use-modules (guix derivations) (sqlite3))

(define %handshake
  '("handshake: client magic"
    "handshake: client version, cpu affinity, reserve space"))

(define %missing (string-append (%store-prefix)
                                "/00000000000000000000000000000000-missing"))

(define (force-registration-times!)
  (let ((db (sqlite-open (string-append (getenv "GUIX_DATABASE_DIRECTORY")
                                        "/db.sqlite")
                         SQLITE_OPEN_READWRITE)))
    (sqlite-busy-timeout db 10000)
    (sqlite-exec db "update ValidPaths set registrationTime = 1;")
    (sqlite-close db)))

;; Steps of the connection being recorded: (description expected-label ...).
(define %steps '())
(define (step! description . labels)
  (set! %steps (cons (cons description labels) %steps)))

(define (finish-connection label description)
  (let ((steps (reverse %steps)))
    (set! %steps '())
    `(("label" . ,label)
      ("description" . ,description)
      ("steps" . ,(arr (map car steps)))
      ("expected_labels" . ,(arr (append %handshake (append-map cdr steps)))))))

(define (expect-error thunk)
  (call-with-values (lambda () (daemon-error thunk))
    (lambda (result message status)
      (unless message (error "expected a daemon error" result))
      message)))

;;; Connection 0: a session that uses most read/write operations.

(define (session)
  (define s (connect))
  (step! "open-connection (handshake)")
  (set-build-options s)
  (step! "set-build-options with the client's defaults" "set-options")
  (let* ((hello (add-text-to-store s "hello" "world" '()))
         (_ (step! "add-text-to-store \"hello\" \"world\" ()" "add-text-to-store"))
         (with-ref (add-text-to-store s "with-ref" "see hello" (list hello)))
         (_ (step! "add-text-to-store \"with-ref\" \"see hello\" (hello)"
                   "add-text-to-store"))
         (flat (add-to-store s "f.txt" #f "sha256"
                             (materialise `(regular ,(utf8 "hi\n")))))
         (_ (step! "add-to-store \"f.txt\" flat sha256, a regular file \"hi\\n\""
                   "add-to-store"))
         (tree (add-to-store s "tree" #t "sha256"
                             (materialise `(directory
                                            ("b" (regular ,(utf8 "bee")))
                                            ("a" (executable ,(utf8 "ay")))
                                            ("l" (symlink "b"))))))
         (_ (step! "add-to-store \"tree\" recursive sha256, a directory with b (file \"bee\"), a (executable \"ay\"), l (symlink to \"b\")"
                   "add-to-store"))
         (x (materialise `(executable ,(utf8 "#!/bin/sh\n"))))
         (x-md5 (add-to-store s "x" #t "md5" x))
         (_ (step! "add-to-store \"x\" recursive md5, an executable file \"#!/bin/sh\\n\""
                   "add-to-store"))
         (x-sha1 (add-to-store s "x" #f "sha1" x))
         (_ (step! "add-to-store \"x\" flat sha1, the same file" "add-to-store")))
    (valid-path? s with-ref)
    (step! "valid-path? with-ref (valid)" "valid-path?")
    (valid-path? s %missing)
    (step! (string-append "valid-path? " %missing " (not valid)") "valid-path?")
    (force-registration-times!)
    (query-path-info s with-ref)
    (step! "query-path-info with-ref (registration time forced to 1 beforehand)"
           "query-path-info")
    (references s with-ref)
    (step! "references with-ref" "query-references")
    (referrers s hello)
    (step! "referrers hello" "query-referrers")
    (hash-part->path s (store-path-hash-part hello))
    (step! "hash-part->path of hello's hash part" "query-path-from-hash-part")
    (hash-part->path s (make-string 32 #\0))
    (step! "hash-part->path of 32 zeros (unknown)" "query-path-from-hash-part")
    (let ((drv (derivation s "wire-drv" hello '("-c" "true")
                           #:system "x86_64-linux"
                           #:outputs '("out" "doc")
                           #:sources (list hello))))
      (step! "derivation \"wire-drv\" (builder: hello; outputs out, doc): writes the .drv"
             "add-text-to-store")
      (query-derivation-outputs s (derivation-file-name drv))
      (step! "query-derivation-outputs of wire-drv.drv" "query-derivation-outputs"))
    (built-in-builders s)
    (step! "built-in-builders" "built-in-builders")
    (substitute-urls s)
    (step! "substitute-urls (daemon started with two substitutes.invalid URLs)"
           "substitute-urls")
    (add-temp-root s hello)
    (step! "add-temp-root hello" "add-temp-root")
    (export-bytes s with-ref)
    (step! "export-paths (with-ref) #:sign? #f: the client first asks for the references of with-ref and of hello to sort topologically"
           "query-references" "query-references" "export-path")
    (expect-error (lambda () (query-path-info s %missing)))
    (step! (string-append "query-path-info " %missing " -> error, session continues")
           "query-path-info")
    (expect-error (lambda () (add-text-to-store s "bad/name" "x" '())))
    (step! "add-text-to-store \"bad/name\" -> error" "add-text-to-store")
    (expect-error (lambda () (valid-path? s "/etc/passwd")))
    (step! "valid-path? \"/etc/passwd\" -> error, session continues" "valid-path?")
    (valid-path? s hello)
    (step! "valid-path? hello (the session is still usable)" "valid-path?")
    (close-connection s)
    (finish-connection "session"
                       "one session using most store operations, ending with recoverable errors")))

;;; Connection 1: set-build-options with overrides.

(define (overrides)
  (define s (connect))
  (step! "open-connection (handshake)")
  (set-build-options s
                     #:keep-failed? #t #:keep-going? #t #:fallback? #t
                     #:verbosity 3 #:rounds 2 #:max-build-jobs 4
                     #:timeout 600 #:max-silent-time 60 #:offload? #f
                     #:build-verbosity 1 #:log-type 2
                     #:print-build-trace #t
                     #:print-extended-build-trace? #t
                     #:multiplexed-build-output? #t
                     #:build-cores 2 #:use-substitutes? #t
                     #:substitute-urls '("https://one.invalid" "https://two.invalid")
                     #:user-name "alice" #:terminal-columns 123
                     #:locale "C")
  (step! "set-build-options: keep-failed, keep-going, fallback, verbosity 3, rounds 2, max-build-jobs 4, timeout 600, max-silent-time 60, offload #f, build-verbosity 1, log-type 2, print-build-trace, extended trace, multiplexed output, build-cores 2, substitutes with two URLs, user-name alice, terminal-columns 123, locale C"
         "set-options")
  (substitute-urls s)
  (step! "substitute-urls (now the client's URLs: the client is trusted)"
         "substitute-urls")
  (close-connection s)
  (finish-connection "set-build-options-overrides"
                     "set-build-options with every optional field set"))

;;; Connection 2: an error that ends the session.

(define (fatal-error)
  (define s (connect))
  (step! "open-connection (handshake)")
  (expect-error (lambda () (query-path-info s "/etc/passwd")))
  (step! "query-path-info \"/etc/passwd\" -> error; the daemon then closes the session"
         "query-path-info")
  (close-connection s)
  (finish-connection "query-path-info-not-in-store"
                     "a request whose argument fails the store-path check before the work starts"))

;;; Connection 3: a file bigger than the daemon's 64 KiB export buffer.

(define (big-export)
  (define s (connect))
  (step! "open-connection (handshake)")
  (let* ((file (materialise `(pattern 66000 ,(u8-list->bytevector (iota 251)) #f)))
         (path (add-to-store s "big" #f "sha256" file)))
    (step! "add-to-store \"big\" flat sha256, 66000 bytes, byte i = i mod 251"
           "add-to-store")
    (export-bytes s path)
    (step! "export-paths (big) #:sign? #f" "query-references" "export-path"))
  (close-connection s)
  (finish-connection "big-export"
                     "a request and an export larger than the 8 KiB client buffer and the 64 KiB daemon buffer"))

(let* ((c0 (session))
       (c1 (overrides))
       (c2 (fatal-error))
       (c3 (big-export)))
  (write-json!
   `(("notes"
      . ,(arr
          '("Registration times were set to 1 (SQLite) before each query-path-info."
            "The client runs as root with LC_ALL=C.UTF-8 and COLUMNS=80, so its default set-build-options pairs are fixed."
            "The daemon ran with --substitute-urls=\"https://substitutes.invalid/a https://substitutes.invalid/b\".")))
     ("connections" . ,(arr (list c0 c1 c2 c3))))))
