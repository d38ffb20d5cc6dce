;;; options.scm -- set-build-options: every option the 1.5.0 client sends,
;;; override pairs set by hand (settings a trusted client may change, bad
;;; values, unknown names), and what verbosity changes in the messages a
;;; client receives.
;;;
;;; Run against a daemon started with --no-substitutes.

(load (string-append (dirname (current-filename)) "/common.scm"))

(define s (connect))

(define item (add-text-to-store s "item" "item\n" '()))

(define (export-log store)
  "Export ITEM and return nothing: what matters is the log it produces."
  (call-with-values open-bytevector-output-port
    (lambda (port get)
      (export-paths store (list item) port #:sign? #f)
      (bytevector-length (get)))))

;;; What the daemon says, at each verbosity, while it works.

(for-each
 (lambda (level)
   (let ((tag (string-append "verbosity " (number->string level))))
     (expect-ok! (string-append tag ": set-build-options")
                 (lambda () (set-build-options s #:verbosity level)))
     (expect-ok! (string-append tag ": export") (lambda () (export-log s)))
     (expect-ok! (string-append tag ": add-text-to-store")
                 (lambda ()
                   (add-text-to-store s (string-append "v" (number->string level))
                                      "verbose\n" '())))
     (expect-ok! (string-append tag ": query-path-info")
                 (lambda () (query-path-info s item))
                 #:encode path-info->json)))
 '(0 1 2 3))

;;; Every keyword of the client's set-build-options.

(define-syntax-rule (options! label args ...)
  (expect-ok! label (lambda () (set-build-options s args ...))))

(options! "keep-failed" #:keep-failed? #t)
(options! "keep-going" #:keep-going? #t)
(options! "fallback" #:fallback? #t)
(options! "max-build-jobs" #:max-build-jobs 4)
(options! "max-silent-time" #:max-silent-time 60)
(options! "timeout" #:timeout 120)
(options! "offload off" #:offload? #f)
(options! "build-verbosity" #:build-verbosity 2)
(options! "log-type" #:log-type 1)
(options! "print-build-trace off" #:print-build-trace #f)
(options! "extended build trace" #:print-extended-build-trace? #t)
(options! "multiplexed build output" #:multiplexed-build-output? #t)
(options! "build-cores" #:build-cores 3)
(options! "rounds" #:rounds 2)
(options! "user-name" #:user-name "nobody")
(options! "terminal-columns" #:terminal-columns 132)
(options! "locale" #:locale "C")
(options! "all at once"
          #:keep-failed? #f #:keep-going? #f #:fallback? #f
          #:max-build-jobs 1 #:max-silent-time 3600 #:timeout 86400
          #:build-cores 0 #:rounds 1 #:verbosity 0)
(step-alive! "alive after set-build-options" s #t)

;;; Override pairs written by hand, each on a connection of its own (a bad
;;; value ends the session).  The fields before the pairs are the client's
;;; defaults.

(define (set-options-pairs store pairs)
  (raw-operation store 19
                 (lambda (p)
                   (write-int 0 p)      ;keep failed
                   (write-int 0 p)      ;keep going
                   (write-int 0 p)      ;fallback
                   (write-int 0 p)      ;verbosity
                   (write-int 1 p)      ;use build hook
                   (write-int 0 p)      ;build verbosity
                   (write-int 0 p)      ;log type
                   (write-int 1 p)      ;print build trace
                   (write-int 0 p)      ;use substitutes
                   (write-string-pairs pairs p))
                 (const #t)))

(define (pairs! label pairs)
  (let ((c (connect)))
    (step! label (lambda () (set-options-pairs c pairs)))
    (record! (string-append label ": session alive after") (alive? c))))

(pairs! "pairs: build settings"
        '(("build-timeout" . "10") ("build-max-silent-time" . "5")
          ("build-max-jobs" . "2") ("build-cores" . "1")
          ("build-repeat" . "0") ("multiplexed-build-output" . "false")))
(pairs! "pairs: daemon settings a trusted client may set"
        '(("build-use-chroot" . "false") ("gc-keep-outputs" . "true")
          ("build-cache-failure" . "true")))
(pairs! "pairs: unknown setting" '(("no-such-setting" . "1")))
(pairs! "pairs: empty list" '())
(pairs! "pairs: build-cores not a number" '(("build-cores" . "abc")))
(pairs! "pairs: build-max-jobs negative" '(("build-max-jobs" . "-1")))
(pairs! "pairs: build-timeout empty" '(("build-timeout" . "")))
(pairs! "pairs: Boolean setting not a Boolean"
        '(("build-use-chroot" . "maybe")))
(pairs! "pairs: Boolean setting as 1" '(("gc-keep-outputs" . "1")))

;;; An integer field too large for the protocol's 32 bits.
(let ((c (connect)))
  (step! "set-options with a 33-bit integer field"
         (lambda ()
           (raw-operation c 19
                          (lambda (p)
                            (write-long-long (expt 2 32) p)
                            (write-int 0 p) (write-int 0 p) (write-int 0 p)
                            (write-int 1 p) (write-int 0 p) (write-int 0 p)
                            (write-int 1 p) (write-int 0 p)
                            (write-string-pairs '() p))
                          (const #t))))
  (record! "set-options with a 33-bit integer field: session alive after"
           (alive? c)))

(step-alive! "first session still alive" s #t)

(finish!)
